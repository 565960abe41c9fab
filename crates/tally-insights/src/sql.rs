//! SQL that applications report (and tally's own store queries) turned into what a
//! slow-query report groups and advises on (seed 001, `GET /performance/slow-queries/`):
//!
//! - a **fingerprint**: the statement with every literal replaced by `?`, lists of literals
//!   (`IN (1, 2, 3)`, `VALUES (…), (…)`) collapsed to one, and keywords and spacing made
//!   canonical, so `… WHERE id = 7` and `… where id=8` are one query; and its hash;
//! - **advice**: rules over the parsed statement, each with a stable code (leading-wildcard
//!   `LIKE`, `SELECT *`, no `WHERE`, a function wrapped around a filtered column, join
//!   columns to index, joins without a condition or many of them).
//!
//! SQL is parsed with `sqlparser` (generic dialect, which reads PostgreSQL, MySQL and
//! SQLite's common syntax). Text it cannot parse still gets a fingerprint, from its tokens
//! (literals and spacing normalised), and no advice. Input is untrusted: it is capped in
//! length and in nesting depth, and nothing here panics on it.

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};
use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, BinaryOperator, Expr, Function, GroupByExpr,
    InTarget, JoinConstraint, JoinOperator, Query, Select, SelectItem, SetExpr, Statement, Value,
    Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The longest SQL text read; longer text is fingerprinted from its first this many bytes.
pub const MAX_SQL_BYTES: usize = 16 * 1024;
/// How deep expressions and subqueries may nest before the parser gives up (the text is
/// then fingerprinted from its tokens).
const MAX_DEPTH: usize = 40;
/// More joined relations than this in one `SELECT` is worth a look.
const MANY_JOINS: usize = 4;

/// One statement's identity in a slow-query report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The first 16 hex digits of SHA-256 over `normalized`.
    pub hash: String,
    /// The statement with its literals replaced by `?`.
    pub normalized: String,
    /// Whether the text parsed; advice is given only for parsed statements.
    pub parsed: bool,
}

/// A piece of advice on a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// Stable: `leading_wildcard_like`, `select_star`, `missing_where`,
    /// `function_on_column`, `join_without_condition`, `join_columns`, `many_joins`.
    pub code: &'static str,
    /// What to do, naming the column or table concerned.
    pub message: String,
}

/// The fingerprint of `sql` and the advice on it, from one parse.
pub fn analyse(sql: &str) -> (Fingerprint, Vec<Advice>) {
    let sql = truncate(sql.trim(), MAX_SQL_BYTES);
    let dialect = GenericDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    match parsed {
        Ok(mut statements) if !statements.is_empty() => {
            let mut advice = Advisor::default();
            let _ = Visit::visit(&statements, &mut advice);
            let mut normalizer = Normalizer;
            let _ = VisitMut::visit(&mut statements, &mut normalizer);
            let _ = visit_expressions_mut(&mut statements, |e| {
                if let Expr::Value(v) = e {
                    if !matches!(v.value, Value::Null | Value::Placeholder(_)) {
                        *e = placeholder();
                    }
                }
                ControlFlow::<()>::Continue(())
            });
            let text = statements
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            (fingerprint(text, true), advice.found)
        }
        _ => (fingerprint(lexical(sql), false), Vec::new()),
    }
}

fn fingerprint(normalized: String, parsed: bool) -> Fingerprint {
    let digest = Sha256::digest(normalized.as_bytes());
    Fingerprint {
        hash: hex::encode(&digest[..8]),
        normalized,
        parsed,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn placeholder() -> Expr {
    Expr::Value(Value::Placeholder("?".into()).with_empty_span())
}

fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(_) => true,
        Expr::UnaryOp { expr, .. } => is_literal(expr),
        _ => false,
    }
}

/// Text that does not parse: literals become `?`, runs of space one space, keywords and
/// names keep their spelling except for case (upper-cased, as the parsed form prints
/// keywords). Text the tokenizer cannot read either is only squeezed and upper-cased.
fn lexical(sql: &str) -> String {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return sql
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase();
    };
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for t in tokens {
        let piece = match t {
            Token::Whitespace(_) => {
                space = !out.is_empty();
                continue;
            }
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::DollarQuotedString(_) => "?".to_owned(),
            other => other.to_string().to_uppercase(),
        };
        if space {
            out.push(' ');
            space = false;
        }
        out.push_str(&piece);
    }
    out
}

/// Collapses lists of literals to one before the literals themselves become `?`: a query's
/// shape does not change with the number of ids it asks for or rows it inserts.
struct Normalizer;

impl VisitorMut for Normalizer {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Values(values) = q.body.as_mut() {
            if values.rows.len() > 1 && values.rows.iter().flat_map(|r| &r.content).all(is_literal)
            {
                values.rows.truncate(1);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if let Expr::In {
            target: InTarget::List(list),
            ..
        } = e
        {
            if list.len() > 1 && list.iter().all(is_literal) {
                list.truncate(1);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The rules, applied while walking the parsed statements.
#[derive(Default)]
struct Advisor {
    found: Vec<Advice>,
    /// For each query being walked, whether it has a LIMIT (its SELECTs, a UNION's
    /// included, are then paged).
    limited: Vec<bool>,
}

impl Advisor {
    fn add(&mut self, code: &'static str, message: String) {
        if !self
            .found
            .iter()
            .any(|a| a.code == code && a.message == message)
        {
            self.found.push(Advice { code, message });
        }
    }

    /// `WHERE`: patterns with a leading wildcard and functions wrapped around columns,
    /// which both keep an index on the column from being used.
    fn filter(&mut self, selection: &Expr) {
        let _ = visit_expressions(selection, |e| {
            match e {
                Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. }
                    if leading_wildcard(pattern) =>
                {
                    let column = column_name(expr).unwrap_or_else(|| expr.to_string());
                    self.add(
                        "leading_wildcard_like",
                        format!(
                            "{column} is matched with a pattern that starts with a wildcard, \
                             which no index on {column} can serve: anchor the pattern, or use \
                             a full-text or trigram index"
                        ),
                    );
                }
                Expr::BinaryOp { left, op, right } if comparison(op) => {
                    for side in [left, right] {
                        if let Expr::Function(f) = side.as_ref() {
                            if let Some(column) = wrapped_column(f) {
                                self.add(
                                    "function_on_column",
                                    format!(
                                        "{} wraps {column} in a comparison, so an index on \
                                         {column} is not used: compare the column itself \
                                         (e.g. a range for dates), or index the expression",
                                        f.name
                                    ),
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }

    fn select(&mut self, s: &Select, limited: bool) {
        if s.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        }) {
            self.add(
                "select_star",
                "select only the columns the application uses instead of *: less to read and \
                 send, and a covering index becomes possible"
                    .into(),
            );
        }
        let tables: Vec<String> = s.from.iter().map(|t| t.relation.to_string()).collect();
        match &s.selection {
            Some(w) => self.filter(w),
            None if !s.from.is_empty() && !limited && !grouped(s) => self.add(
                "missing_where",
                format!(
                    "reads every row of {} with no WHERE and no LIMIT: filter or page it",
                    tables.join(", ")
                ),
            ),
            None => {}
        }
        if s.from.len() > 1 && s.selection.is_none() {
            self.add(
                "join_without_condition",
                format!(
                    "{} are joined with no condition (a cross product): join them ON their keys",
                    tables.join(", ")
                ),
            );
        }
        let mut relations = s.from.len();
        for t in &s.from {
            relations += t.joins.len();
            for j in &t.joins {
                match join_constraint(&j.join_operator) {
                    Some(JoinConstraint::On(on)) => {
                        let columns = columns_in(on);
                        if !columns.is_empty() {
                            self.add(
                                "join_columns",
                                format!(
                                    "check that the join columns are indexed: {}",
                                    columns.join(", ")
                                ),
                            );
                        }
                    }
                    Some(JoinConstraint::None) => self.add(
                        "join_without_condition",
                        format!(
                            "{} is joined with no condition (a cross product): join it ON its keys",
                            j.relation
                        ),
                    ),
                    _ => {}
                }
            }
        }
        if relations > MANY_JOINS {
            self.add(
                "many_joins",
                format!(
                    "joins {relations} relations in one query: check the plan (EXPLAIN), and \
                     consider fewer joins or a precomputed table"
                ),
            );
        }
    }
}

/// An aggregate over groups reads every row by design.
fn grouped(s: &Select) -> bool {
    !matches!(&s.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
}

impl Visitor for Advisor {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.limited
            .push(q.limit_clause.is_some() || q.fetch.is_some());
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.limited.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let limited = self.limited.last().copied().unwrap_or(false);
        self.select(s, limited);
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        match s {
            Statement::Update(u) => match &u.selection {
                Some(w) => self.filter(w),
                None => self.add(
                    "missing_where",
                    format!(
                        "updates every row of {} (no WHERE): is that intended?",
                        u.table.relation
                    ),
                ),
            },
            Statement::Delete(d) => match &d.selection {
                Some(w) => self.filter(w),
                None => self.add(
                    "missing_where",
                    "deletes every row (no WHERE): is that intended? TRUNCATE is cheaper if so"
                        .into(),
                ),
            },
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

fn leading_wildcard(pattern: &Expr) -> bool {
    match pattern {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                s.starts_with('%') || s.starts_with('_')
            }
            _ => false,
        },
        // `'%' || ?` and CONCAT('%', ?) start with a wildcard too.
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            ..
        } => leading_wildcard(left),
        _ => false,
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => Some(
            parts
                .iter()
                .map(|p| p.value.as_str())
                .collect::<Vec<_>>()
                .join("."),
        ),
        _ => None,
    }
}

/// The first column named among a function's arguments (`LOWER(email)`, `DATE(created_at)`).
fn wrapped_column(f: &Function) -> Option<String> {
    let mut found = None;
    let _ = visit_expressions(&f.args, |e| match column_name(e) {
        Some(c) => {
            found = Some(c);
            ControlFlow::Break(())
        }
        None => ControlFlow::Continue(()),
    });
    found
}

fn columns_in(e: &Expr) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let _ = visit_expressions(e, |e| {
        if let Some(c) = column_name(e) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    use JoinOperator as J;
    match op {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c)
        | J::Semi(c)
        | J::LeftSemi(c)
        | J::RightSemi(c)
        | J::Anti(c)
        | J::LeftAnti(c)
        | J::RightAnti(c)
        | J::StraightJoin(c) => Some(c),
        // CROSS JOIN says what it does.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(sql: &str) -> Vec<&'static str> {
        analyse(sql).1.iter().map(|a| a.code).collect()
    }

    #[test]
    fn literals_and_spacing_do_not_change_the_fingerprint() {
        let (a, _) = analyse("SELECT name FROM users WHERE id = 7 AND email = 'a@b.c'");
        let (b, _) = analyse("select name\n  from users where id=8 and email='x@y.z'  ");
        assert_eq!(a, b);
        assert!(a.parsed);
        assert_eq!(
            a.normalized,
            "SELECT name FROM users WHERE id = ? AND email = ?"
        );
        assert_eq!(a.hash.len(), 16);
        let (c, _) = analyse("SELECT name FROM users WHERE id = 7 OR email = 'a@b.c'");
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn lists_of_literals_collapse_to_one() {
        let (a, _) = analyse("SELECT * FROM t WHERE id IN (1, 2, 3)");
        let (b, _) = analyse("SELECT * FROM t WHERE id IN (4)");
        assert_eq!(a.normalized, "SELECT * FROM t WHERE id IN (?)");
        assert_eq!(a.hash, b.hash);
        let (c, _) = analyse("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (-3, 'z')");
        assert_eq!(c.normalized, "INSERT INTO t (a, b) VALUES (?, ?)");
        // A list that is not all literals keeps its members.
        let (d, _) = analyse("SELECT a FROM t WHERE a IN (b, 1)");
        assert_eq!(d.normalized, "SELECT a FROM t WHERE a IN (b, ?)");
    }

    #[test]
    fn limits_and_null_are_kept_apart() {
        let (a, _) = analyse("SELECT a FROM t WHERE b IS NULL LIMIT 10 OFFSET 20");
        assert_eq!(
            a.normalized,
            "SELECT a FROM t WHERE b IS NULL LIMIT ? OFFSET ?"
        );
        let (b, _) = analyse("SELECT a FROM t WHERE b = $1");
        assert_eq!(b.normalized, "SELECT a FROM t WHERE b = $1");
    }

    #[test]
    fn text_that_does_not_parse_is_fingerprinted_from_its_tokens() {
        let (a, advice) = analyse("SELEKT  name FROM users WHERE id = 42 AND n = 'x'");
        let (b, _) = analyse("selekt name from users where id = 7 and n = 'yy'");
        assert!(!a.parsed);
        assert!(advice.is_empty());
        assert_eq!(
            a.normalized,
            "SELEKT NAME FROM USERS WHERE ID = ? AND N = ?"
        );
        assert_eq!(a.hash, b.hash);
        // Not even tokens: an unterminated string.
        let (c, _) = analyse("select 'oops");
        assert!(!c.parsed);
        assert_eq!(c.normalized, "SELECT 'OOPS");
    }

    #[test]
    fn hostile_input_is_bounded() {
        let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
        let (f, advice) = analyse(&deep);
        assert!(!f.parsed, "past the depth limit the parser gives up");
        assert!(advice.is_empty());
        let long = format!("SELECT a FROM t WHERE b = '{}'", "é".repeat(40_000));
        let (f, _) = analyse(&long);
        assert!(f.normalized.len() <= MAX_SQL_BYTES);
        assert_eq!(analyse("").0.normalized, "");
    }

    #[test]
    fn the_seeds_leading_wildcard_like_names_the_column() {
        let (f, advice) =
            analyse("SELECT * FROM project_1_clients WHERE email LIKE '%@company.com%'");
        assert_eq!(
            f.normalized,
            "SELECT * FROM project_1_clients WHERE email LIKE ?"
        );
        let like = advice
            .iter()
            .find(|a| a.code == "leading_wildcard_like")
            .expect("leading wildcard found");
        assert!(
            like.message.starts_with("email is matched"),
            "{}",
            like.message
        );
        assert!(codes("SELECT * FROM t").contains(&"select_star"));
        assert!(
            !codes("SELECT a FROM t WHERE email LIKE 'abc%'").contains(&"leading_wildcard_like")
        );
        assert!(codes("SELECT a FROM t WHERE name ILIKE '_bc'").contains(&"leading_wildcard_like"));
        assert!(
            codes("SELECT a FROM t WHERE name LIKE '%' || 'x'").contains(&"leading_wildcard_like")
        );
    }

    #[test]
    fn select_star_is_advised_for_qualified_stars_too() {
        let c = codes("SELECT c.*, p.* FROM clients c LEFT JOIN projects p ON c.project_id = p.id");
        assert!(c.contains(&"select_star"));
        assert!(c.contains(&"join_columns"));
        let (_, advice) =
            analyse("SELECT c.*, p.* FROM clients c LEFT JOIN projects p ON c.project_id = p.id");
        let join = advice
            .iter()
            .find(|a| a.code == "join_columns")
            .expect("join advice");
        assert!(
            join.message.ends_with("c.project_id, p.id"),
            "{}",
            join.message
        );
        assert!(!codes("SELECT a, b FROM t WHERE a = 1").contains(&"select_star"));
    }

    #[test]
    fn a_missing_where_is_advised_unless_limited_or_grouped() {
        assert!(codes("SELECT a FROM big").contains(&"missing_where"));
        assert!(!codes("SELECT a FROM big LIMIT 10").contains(&"missing_where"));
        assert!(!codes("SELECT a, count(*) FROM big GROUP BY a").contains(&"missing_where"));
        assert!(!codes("SELECT 1").contains(&"missing_where"));
        assert!(codes("UPDATE accounts SET balance = 0").contains(&"missing_where"));
        assert!(!codes("UPDATE accounts SET balance = 0 WHERE id = 3").contains(&"missing_where"));
        assert!(codes("DELETE FROM sessions").contains(&"missing_where"));
        assert!(!codes("DELETE FROM sessions WHERE id = 3").contains(&"missing_where"));
    }

    #[test]
    fn functions_around_filtered_columns_are_advised() {
        let (_, advice) = analyse("SELECT id FROM users WHERE LOWER(email) = 'a@b.c'");
        let f = advice
            .iter()
            .find(|a| a.code == "function_on_column")
            .expect("function on column");
        assert!(f.message.contains("LOWER wraps email"), "{}", f.message);
        assert!(
            codes("SELECT id FROM orders WHERE DATE(o.created_at) >= '2024-01-01'")
                .contains(&"function_on_column")
        );
        assert!(codes("UPDATE t SET a = 1 WHERE upper(name) = 'X'").contains(&"function_on_column"));
        // A function of literals only is not on a column.
        assert!(!codes("SELECT id FROM t WHERE a = LOWER('X')").contains(&"function_on_column"));
        assert!(!codes("SELECT id FROM t WHERE email = 'x'").contains(&"function_on_column"));
    }

    #[test]
    fn joins_without_conditions_and_many_joins_are_advised() {
        assert!(codes("SELECT a.x FROM a, b").contains(&"join_without_condition"));
        assert!(
            !codes("SELECT a.x FROM a, b WHERE a.id = b.a_id").contains(&"join_without_condition")
        );
        assert!(codes("SELECT a.x FROM a JOIN b").contains(&"join_without_condition"));
        let many = "SELECT a.x FROM a JOIN b ON a.id = b.a JOIN c ON b.id = c.b \
                    JOIN d ON c.id = d.c JOIN e ON d.id = e.d WHERE a.x = 1";
        assert!(codes(many).contains(&"many_joins"));
        assert!(
            !codes("SELECT a.x FROM a JOIN b ON a.id = b.a WHERE a.x = 1").contains(&"many_joins")
        );
    }

    #[test]
    fn subqueries_are_advised_on_too() {
        let c = codes("SELECT id FROM t WHERE id IN (SELECT t_id FROM u WHERE name LIKE '%x')");
        assert!(c.contains(&"leading_wildcard_like"));
        // The literal inside the subquery is a placeholder as well.
        let (f, _) = analyse("SELECT id FROM t WHERE id IN (SELECT t_id FROM u WHERE n = 5)");
        assert_eq!(
            f.normalized,
            "SELECT id FROM t WHERE id IN (SELECT t_id FROM u WHERE n = ?)"
        );
    }
}
