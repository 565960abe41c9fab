//! LLM usage records and price overrides.

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use tally_core::pricing::{ModelPrice, Nanos};

use rusqlite::types::Value;
use tally_core::sketch::LatencySketch;
use tally_core::time::day_of;
use tally_core::usage::{
    CallStatus, ConversationUsage, CostSource, Generation, Granularity, StoredUsage, UsageFilter,
    UsageRecord, UsageRollup, UsageTotals, UserUsage, NEW_GENERATION_PREFIXES,
};
use tally_core::TenantId;

use super::writer::Topic;
use super::{conversion_error, money_column, money_sum_at, money_sum_sql, nanos_at, SqliteStore};
use crate::{CommitSeq, StoreError, StoreResult, UsageInsert, UsageOutcome, UsageStore};

fn cost_source(s: CostSource) -> &'static str {
    match s {
        CostSource::Reported => "reported",
        CostSource::Catalog => "catalog",
        CostSource::Unpriced => "unpriced",
    }
}

type RollupKey = (TenantId, Granularity, i64, String, String);
/// (tenant, day or month, user, model): model `""` is every model.
type UserKey = (TenantId, i64, String, String);
type ConversationKey = (TenantId, String);
/// One tenant's per-user totals by (day, user, model).
type DayTotals = HashMap<(i64, String, String), UsageTotals>;
/// One tenant's per-user calls and cost by (month, user, model).
type MonthTotals = HashMap<(i64, String, String), (u64, Nanos)>;
/// One tenant's per-API-key totals by (day, key id).
type KeyTotals = HashMap<(i64, String), UsageTotals>;
/// One tenant's conversation totals, with the conversation's user.
type ConversationTotals = HashMap<String, (Option<String>, UsageTotals)>;

/// A total pending in this transaction, beside the cost already stored in its row (what
/// the pending cost will be added to), once a check has read it.
#[derive(Clone, Default)]
struct Pending<T> {
    /// `None` until a check needed it.
    stored: Option<Nanos>,
    delta: T,
}

/// The usage topic's state on the writer thread: every rollup, per-user and
/// per-conversation total the transaction's records add, folded into their rows once,
/// just before commit. A record whose costs would take a stored total past 64 bits is
/// refused when it is added (409 for its caller alone), so the flush never fails on it.
#[derive(Clone, Default)]
pub(crate) struct UsageTopic {
    rollups: HashMap<RollupKey, Pending<UsageRollup>>,
    days: HashMap<UserKey, Pending<UsageTotals>>,
    months: HashMap<UserKey, Pending<(u64, Nanos)>>,
    keys: HashMap<(TenantId, i64, String), Pending<UsageTotals>>,
    conversations: HashMap<ConversationKey, Pending<(Option<String>, UsageTotals)>>,
    /// Per tenant, an upper bound on any stored cost total (`bound`); across transactions.
    tenant_cost: HashMap<TenantId, Nanos>,
    /// Per tenant, the cost this transaction adds.
    pending_cost: HashMap<TenantId, Nanos>,
}

/// What one insert adds, before it is admitted into the transaction's totals.
#[derive(Default)]
struct UsageDelta {
    rollups: HashMap<(Granularity, i64, String, String), UsageRollup>,
    days: DayTotals,
    keys: KeyTotals,
    conversations: ConversationTotals,
}

impl UsageDelta {
    fn months(&self) -> MonthTotals {
        let mut months = MonthTotals::new();
        for ((day, user, model), t) in &self.days {
            let m = months
                .entry((month_of_day(*day), user.clone(), model.clone()))
                .or_default();
            m.0 += t.calls;
            m.1 += t.cost;
        }
        months
    }
}

/// Names of rows in the overflow check's cache of stored costs. Ids and names never hold
/// control characters, so `\0` separates them unambiguously.
mod label {
    use std::fmt::Display;

    use tally_core::usage::Granularity;

    pub(super) fn rollup(
        g: Granularity,
        bucket: impl Display,
        provider: &str,
        model: &str,
    ) -> String {
        format!("r{}\0{bucket}\0{provider}\0{model}", g.as_str())
    }

    pub(super) fn user(table: &str, period: impl Display, user: &str, model: &str) -> String {
        format!("{table}{period}\0{user}\0{model}")
    }

    pub(super) fn key(day: impl Display, key: &str) -> String {
        format!("k{day}\0{key}")
    }

    pub(super) fn conversation(conv: &str) -> String {
        format!("c{conv}")
    }
}

/// The cost a row holds now (zero for no row), read with `sql` and its key.
fn stored_cost(conn: &Connection, sql: &str, key: &[&dyn rusqlite::ToSql]) -> StoreResult<Nanos> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(key, |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(Nanos::ZERO, Nanos::from))
}

/// Whether `stored + pending + added` still fits a stored cost total.
fn fits(stored: Nanos, pending: Nanos, added: Nanos) -> StoreResult<()> {
    if stored.0 + pending.0 + added.0 > i128::from(i64::MAX) {
        return Err(overflow());
    }
    Ok(())
}

impl UsageTopic {
    /// An upper bound on every stored cost total of `tenant` (rollup, per-user and
    /// conversation rows alike): what its calls ever cost, read once from the day
    /// rollups (costs are never negative) and kept current by `committed`.
    fn bound(&mut self, conn: &Connection, tenant: TenantId) -> StoreResult<Nanos> {
        if let Some(b) = self.tenant_cost.get(&tenant) {
            return Ok(*b);
        }
        let b = conn
            .prepare_cached(&format!(
                "SELECT {} FROM llm_usage_rollup WHERE tenant_id = ?1 AND granularity = 'day'",
                money_sum_sql("cost_nanos")
            ))?
            .query_row([tenant.0.as_bytes()], |r| money_sum_at(r, 0))?;
        self.tenant_cost.insert(tenant, b);
        Ok(b)
    }

    /// Adds one insert's totals to the transaction's, after checking that none would take
    /// a stored cost total past 64 bits (then nothing is added and the insert fails). The
    /// check reads no row while the tenant's whole spend, this transaction's and this
    /// insert's together fit 64 bits (no row can hold more); past that, it reads each
    /// row the insert adds to.
    fn admit(&mut self, conn: &Connection, tenant: TenantId, delta: UsageDelta) -> StoreResult<()> {
        let added = Nanos(
            delta
                .rollups
                .iter()
                .filter(|((g, ..), _)| *g == Granularity::Day)
                .map(|(_, r)| r.cost.0)
                .sum(),
        );
        let pending = self
            .pending_cost
            .get(&tenant)
            .copied()
            .unwrap_or(Nanos::ZERO);
        let safe = self.bound(conn, tenant)?.0 + pending.0 + added.0 <= i128::from(i64::MAX);
        let months = delta.months();
        let read = if safe {
            HashMap::new()
        } else {
            self.check_rows(conn, tenant, &delta, &months)?
        };
        // Rows read by the check are remembered for later inserts of this transaction.
        let stored = |label: String| read.get(&label).copied();
        for ((g, bucket, provider, model), r) in delta.rollups {
            let label = (!safe).then(|| label::rollup(g, bucket, &provider, &model));
            let entry = self
                .rollups
                .entry((tenant, g, bucket, provider, model))
                .or_insert_with(|| Pending {
                    stored: None,
                    delta: UsageRollup {
                        bucket: r.bucket,
                        provider: r.provider.clone(),
                        model: r.model.clone(),
                        ..Default::default()
                    },
                });
            if entry.stored.is_none() {
                entry.stored = label.and_then(stored);
            }
            entry
                .delta
                .merge(&r)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
        }
        for ((day, user, model), d) in delta.days {
            let label = (!safe).then(|| label::user("d", day, &user, &model));
            let entry = self.days.entry((tenant, day, user, model)).or_default();
            if entry.stored.is_none() {
                entry.stored = label.and_then(stored);
            }
            entry.delta.merge(&d);
        }
        for ((month, user, model), (calls, cost)) in months {
            let label = (!safe).then(|| label::user("m", month, &user, &model));
            let entry = self.months.entry((tenant, month, user, model)).or_default();
            if entry.stored.is_none() {
                entry.stored = label.and_then(stored);
            }
            entry.delta.0 += calls;
            entry.delta.1 += cost;
        }
        for ((day, key), d) in delta.keys {
            let label = (!safe).then(|| label::key(day, &key));
            let entry = self.keys.entry((tenant, day, key)).or_default();
            if entry.stored.is_none() {
                entry.stored = label.and_then(stored);
            }
            entry.delta.merge(&d);
        }
        for (conv, (user, c)) in delta.conversations {
            let label = (!safe).then(|| label::conversation(&conv));
            let entry = self
                .conversations
                .entry((tenant, conv))
                .or_insert_with(|| Pending {
                    stored: None,
                    delta: (None, UsageTotals::default()),
                });
            if entry.stored.is_none() {
                entry.stored = label.and_then(stored);
            }
            if entry.delta.0.is_none() {
                entry.delta.0 = user;
            }
            entry.delta.1.merge(&c);
        }
        *self.pending_cost.entry(tenant).or_default() += added;
        Ok(())
    }

    /// Checks every row `delta` adds to against the stored total (read unless this
    /// transaction read it already) and what the transaction adds to it; returns the
    /// rows read, by label.
    fn check_rows(
        &self,
        conn: &Connection,
        tenant: TenantId,
        delta: &UsageDelta,
        months: &MonthTotals,
    ) -> StoreResult<HashMap<String, Nanos>> {
        let t = tenant.0.as_bytes();
        let mut read: HashMap<String, Nanos> = HashMap::new();
        let mut check = |label: String,
                         known: (Option<Nanos>, Nanos),
                         added: Nanos,
                         sql: &str,
                         key: &[&dyn rusqlite::ToSql]|
         -> StoreResult<()> {
            let (stored, pending) = known;
            let stored = match stored {
                Some(s) => s,
                None => {
                    let s = stored_cost(conn, sql, key)?;
                    read.insert(label, s);
                    s
                }
            };
            fits(stored, pending, added)
        };
        fn known<T>(p: Option<&Pending<T>>, cost: impl Fn(&T) -> Nanos) -> (Option<Nanos>, Nanos) {
            p.map_or((None, Nanos::ZERO), |p| (p.stored, cost(&p.delta)))
        }
        for ((g, bucket, provider, model), r) in &delta.rollups {
            let key = (tenant, *g, *bucket, provider.clone(), model.clone());
            check(
                label::rollup(*g, bucket, provider, model),
                known(self.rollups.get(&key), |d| d.cost),
                r.cost,
                "SELECT cost_nanos FROM llm_usage_rollup WHERE tenant_id = ?1 AND granularity = ?2
                 AND bucket = ?3 AND provider = ?4 AND model = ?5",
                &[&t, &g.as_str(), bucket, provider, model],
            )?;
        }
        for ((day, user, model), d) in &delta.days {
            let key = (tenant, *day, user.clone(), model.clone());
            let k = known(self.days.get(&key), |d| d.cost);
            let label = label::user("d", day, user, model);
            if model.is_empty() {
                check(label, k, d.cost,
                    "SELECT cost_nanos FROM llm_user_daily WHERE tenant_id = ?1 AND user_id = ?2 AND day = ?3",
                    &[&t, user, day])?;
            } else {
                check(label, k, d.cost,
                    "SELECT cost_nanos FROM llm_user_model_daily WHERE tenant_id = ?1 AND model = ?2
                     AND user_id = ?3 AND day = ?4",
                    &[&t, model, user, day])?;
            }
        }
        for ((month, user, model), (_, cost)) in months {
            let key = (tenant, *month, user.clone(), model.clone());
            let k = known(self.months.get(&key), |d| d.1);
            let label = label::user("m", month, user, model);
            if model.is_empty() {
                check(label, k, *cost,
                    "SELECT cost_nanos FROM llm_user_monthly WHERE tenant_id = ?1 AND month = ?2 AND user_id = ?3",
                    &[&t, month, user])?;
            } else {
                check(label, k, *cost,
                    "SELECT cost_nanos FROM llm_user_model_monthly WHERE tenant_id = ?1 AND model = ?2
                     AND month = ?3 AND user_id = ?4",
                    &[&t, model, month, user])?;
            }
        }
        for ((day, key), d) in &delta.keys {
            check(
                label::key(day, key),
                known(self.keys.get(&(tenant, *day, key.clone())), |d| d.cost),
                d.cost,
                "SELECT cost_nanos FROM llm_key_daily WHERE tenant_id = ?1 AND api_key_id = ?2 AND day = ?3",
                &[&t, key, day],
            )?;
        }
        for (conv, (_, c)) in &delta.conversations {
            let key = (tenant, conv.clone());
            check(
                label::conversation(conv),
                known(self.conversations.get(&key), |d| d.1.cost),
                c.cost,
                "SELECT cost_nanos FROM llm_conversations WHERE tenant_id = ?1 AND conversation_id = ?2",
                &[&t, conv],
            )?;
        }
        Ok(read)
    }

    fn clear(&mut self) {
        self.rollups.clear();
        self.days.clear();
        self.months.clear();
        self.keys.clear();
        self.conversations.clear();
    }
}

impl Topic for UsageTopic {
    fn flush(&mut self, conn: &Connection, _commit: CommitSeq) -> StoreResult<()> {
        for ((tenant, g, _, _, _), p) in self.rollups.drain() {
            fold_rollup(conn, tenant, g, p.delta)?;
        }
        let mut by_tenant: HashMap<TenantId, DayTotals> = HashMap::new();
        for ((tenant, day, user, model), p) in self.days.drain() {
            by_tenant
                .entry(tenant)
                .or_default()
                .insert((day, user, model), p.delta);
        }
        let mut months: HashMap<TenantId, MonthTotals> = HashMap::new();
        for ((tenant, month, user, model), p) in self.months.drain() {
            months
                .entry(tenant)
                .or_default()
                .insert((month, user, model), p.delta);
        }
        for (tenant, days) in by_tenant {
            let months = months.remove(&tenant).unwrap_or_default();
            fold_users(conn, tenant, days, months)?;
        }
        let mut keys: HashMap<TenantId, KeyTotals> = HashMap::new();
        for ((tenant, day, key), p) in self.keys.drain() {
            keys.entry(tenant).or_default().insert((day, key), p.delta);
        }
        for (tenant, keys) in keys {
            fold_keys(conn, tenant, keys)?;
        }
        let mut conversations: HashMap<TenantId, ConversationTotals> = HashMap::new();
        for ((tenant, conv), p) in self.conversations.drain() {
            conversations
                .entry(tenant)
                .or_default()
                .insert(conv, p.delta);
        }
        for (tenant, convs) in conversations {
            fold_conversations(conn, tenant, convs)?;
        }
        Ok(())
    }

    fn committed(&mut self, _commit: CommitSeq) {
        self.clear();
        for (tenant, cost) in self.pending_cost.drain() {
            if let Some(bound) = self.tenant_cost.get_mut(&tenant) {
                *bound += cost;
            }
        }
    }

    fn aborted(&mut self) {
        self.clear();
        self.pending_cost.clear();
        self.tenant_cost.clear();
    }

    fn forget(
        &mut self,
        conn: &Connection,
        tenant: TenantId,
        user: Option<&str>,
    ) -> StoreResult<()> {
        // What is pending is written first, so the deletion finds every row as if each
        // insert had folded its own (a conversation belongs to whoever its stored row
        // names); the deletion's savepoint undoes these writes with it if it fails.
        self.flush(conn, CommitSeq::default())?;
        if user.is_none() {
            self.tenant_cost.remove(&tenant);
            self.pending_cost.remove(&tenant);
        }
        Ok(())
    }
}

fn insert_tx(
    conn: &Connection,
    topic: &mut UsageTopic,
    tenant: TenantId,
    records: &[UsageRecord],
) -> StoreResult<Vec<UsageOutcome>> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO llm_usage (tenant_id, client_id, dedup_ts, user_id, conversation_id, job_id,
             provider, model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, latency_ms, ttft_ms,
             status, error_type, quality_score, cost_nanos, cost_source, ts, received_at, metadata, api_key_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )?;
    let mut find = conn.prepare_cached(
        "SELECT id FROM llm_usage WHERE tenant_id = ?1 AND dedup_ts = ?2 AND client_id = ?3",
    )?;
    let tenant_bytes = tenant.0.as_bytes();
    let mut out = Vec::with_capacity(records.len());
    let mut rollups: HashMap<(Granularity, i64, String, String), UsageRollup> = HashMap::new();
    // Per user and day over all models (model "") and per model.
    let mut users: HashMap<(i64, String, String), UsageTotals> = HashMap::new();
    let mut keys = KeyTotals::new();
    let mut conversations: HashMap<String, (Option<String>, UsageTotals)> = HashMap::new();
    for r in records {
        let key = r.api_key_id.map(|k| k.to_string());
        let dedup_ts = if r.client_id.is_some() && r.timestamp_provided {
            r.timestamp
        } else {
            0
        };
        let inserted = insert.execute(params![
            tenant_bytes,
            r.client_id,
            dedup_ts,
            r.user_id,
            r.conversation_id,
            r.job_id,
            r.provider,
            r.model,
            as_i64(r.tokens.input),
            as_i64(r.tokens.output),
            as_i64(r.tokens.cached_input),
            as_i64(r.tokens.reasoning),
            r.latency_ms,
            r.time_to_first_token_ms,
            r.status.as_str(),
            r.error_type,
            r.quality_score,
            money_column(r.cost)?,
            cost_source(r.cost_source),
            r.timestamp,
            r.received_at,
            r.metadata,
            key,
        ])?;
        if inserted == 1 {
            out.push(UsageOutcome::Inserted {
                id: conn.last_insert_rowid(),
            });
            if !r.status.was_called() {
                // A refused call is listed, never summed: it used nothing.
                continue;
            }
            for g in Granularity::ALL {
                let bucket = g.bucket(r.timestamp);
                rollups
                    .entry((g, bucket, r.provider.clone(), r.model.clone()))
                    .or_insert_with(|| UsageRollup {
                        bucket,
                        provider: r.provider.clone(),
                        model: r.model.clone(),
                        ..Default::default()
                    })
                    .add(r);
            }
            if let Some(user) = &r.user_id {
                let day = day_of(r.timestamp);
                users
                    .entry((day, user.clone(), String::new()))
                    .or_default()
                    .add(r);
                users
                    .entry((day, user.clone(), r.model.clone()))
                    .or_default()
                    .add(r);
            }
            if let Some(key) = key {
                keys.entry((day_of(r.timestamp), key)).or_default().add(r);
            }
            if let Some(conv) = &r.conversation_id {
                conversations
                    .entry(conv.clone())
                    .or_insert_with(|| (r.user_id.clone(), UsageTotals::default()))
                    .1
                    .add(r);
            }
            continue;
        }
        let client_id = r.client_id.as_deref().unwrap_or_default();
        let id: i64 = find
            .query_row(params![tenant_bytes, dedup_ts, client_id], |row| row.get(0))
            .optional()?
            .ok_or_else(|| {
                StoreError::Internal("usage insert ignored without an idempotency conflict".into())
            })?;
        out.push(UsageOutcome::Duplicate { id });
    }
    topic.admit(
        conn,
        tenant,
        UsageDelta {
            rollups,
            days: users,
            keys,
            conversations,
        },
    )?;
    Ok(out)
}

/// How many lifetime-ranked conversations are considered per conversation asked for when
/// ranking a period's most expensive ones.
const CONVERSATION_CANDIDATE_FACTOR: u32 = 5;

/// Ends an upsert of a cost total: the row is left alone (and `guarded` refuses the
/// write) when the sum would pass 64 bits.
macro_rules! cost_guard {
    () => {
        "WHERE cost_nanos <= 9223372036854775807 - excluded.cost_nanos"
    };
}

/// The SQL that adds a batch's totals to a stored row (`excluded` is the batch's delta).
const TOTALS_UPSERT: &str = concat!("calls = calls + excluded.calls, errors = errors + excluded.errors,
    input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
    cost_nanos = cost_nanos + excluded.cost_nanos, latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
    first_ts = min(first_ts, excluded.first_ts), last_ts = max(last_ts, excluded.last_ts) ", cost_guard!());

/// SQLite turns an integer sum past 64 bits into a float: every upsert of a cost total
/// ends with `cost_guard!`, which leaves the row alone instead, and an upsert that changed
/// nothing is refused here.
fn guarded(changed: usize) -> StoreResult<()> {
    if changed == 0 {
        return Err(overflow());
    }
    Ok(())
}

/// A stored cost total would pass 64 bits.
fn overflow() -> StoreError {
    StoreError::Conflict(format!(
        "a stored cost total would exceed {} USD",
        Nanos::from(i64::MAX)
    ))
}

const TOTALS_COLUMNS: &str =
    "calls, errors, input_tokens, output_tokens, cost_nanos, latency_sum_ms, first_ts, last_ts";

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn fold_users(
    conn: &Connection,
    tenant: TenantId,
    users: DayTotals,
    monthly: MonthTotals,
) -> StoreResult<()> {
    let mut all_months = conn.prepare_cached(concat!(
        "INSERT INTO llm_user_monthly (tenant_id, month, user_id, calls, cost_nanos)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id, month, user_id) DO UPDATE SET
                 calls = calls + excluded.calls, cost_nanos = cost_nanos + excluded.cost_nanos ",
        cost_guard!()
    ))?;
    let mut model_months = conn.prepare_cached(concat!(
        "INSERT INTO llm_user_model_monthly (tenant_id, month, user_id, calls, cost_nanos, model)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant_id, model, month, user_id) DO UPDATE SET
                 calls = calls + excluded.calls, cost_nanos = cost_nanos + excluded.cost_nanos ",
        cost_guard!()
    ))?;
    for ((month, user, model), (calls, cost)) in monthly {
        let (t, calls, cost) = (tenant.0.as_bytes(), as_i64(calls), money_column(cost)?);
        guarded(if model.is_empty() {
            all_months.execute(params![t, month, user, calls, cost])?
        } else {
            model_months.execute(params![t, month, user, calls, cost, model])?
        })?;
    }
    let mut all_days = conn.prepare_cached(&format!(
        "INSERT INTO llm_user_daily (tenant_id, day, user_id, {TOTALS_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant_id, user_id, day) DO UPDATE SET {TOTALS_UPSERT}"
    ))?;
    let mut model_days = conn.prepare_cached(&format!(
        "INSERT INTO llm_user_model_daily (tenant_id, day, user_id, {TOTALS_COLUMNS}, model)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (tenant_id, model, user_id, day) DO UPDATE SET {TOTALS_UPSERT}"
    ))?;
    for ((day, user, model), t) in users {
        if model.is_empty() {
            upsert_totals(&mut all_days, tenant, &day, &user, &t, None)?;
        } else {
            upsert_totals(&mut model_days, tenant, &day, &user, &t, Some(&model))?;
        }
    }
    Ok(())
}

fn fold_keys(conn: &Connection, tenant: TenantId, keys: KeyTotals) -> StoreResult<()> {
    let mut upsert = conn.prepare_cached(&format!(
        "INSERT INTO llm_key_daily (tenant_id, day, api_key_id, {TOTALS_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant_id, api_key_id, day) DO UPDATE SET {TOTALS_UPSERT}"
    ))?;
    for ((day, key), t) in keys {
        upsert_totals(&mut upsert, tenant, &day, &key, &t, None)?;
    }
    Ok(())
}

/// Runs a totals upsert whose parameters are the tenant, two key columns, then
/// `TOTALS_COLUMNS`, then `extra` if given.
fn upsert_totals(
    stmt: &mut rusqlite::CachedStatement<'_>,
    tenant: TenantId,
    key_a: &dyn rusqlite::ToSql,
    key_b: &dyn rusqlite::ToSql,
    t: &UsageTotals,
    extra: Option<&dyn rusqlite::ToSql>,
) -> StoreResult<()> {
    let t_bytes = tenant.0.as_bytes();
    let (calls, errors) = (as_i64(t.calls), as_i64(t.errors));
    let (input, output) = (as_i64(t.input_tokens), as_i64(t.output_tokens));
    let cost = money_column(t.cost)?;
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![
        &t_bytes,
        key_a,
        key_b,
        &calls,
        &errors,
        &input,
        &output,
        &cost,
        &t.latency_sum_ms,
        &t.first_ts,
        &t.last_ts,
    ];
    values.extend(extra);
    guarded(stmt.execute(values.as_slice())?)?;
    Ok(())
}

/// Months since 1970-01 of a day number (days since 1970-01-01).
fn month_of_day(day: i64) -> i64 {
    let date = tally_core::time::to_datetime(day * tally_core::time::MICROS_PER_DAY).date_naive();
    i64::from(date.year()) * 12 + i64::from(date.month0()) - 1970 * 12
}

/// How many of each month's most expensive users are considered for a period's ranking.
const USER_CANDIDATES_PER_MONTH: u32 = 200;

fn fold_conversations(
    conn: &Connection,
    tenant: TenantId,
    conversations: ConversationTotals,
) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO llm_conversations (tenant_id, conversation_id, user_id, {TOTALS_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET
             user_id = coalesce(user_id, excluded.user_id), {TOTALS_UPSERT}"
    ))?;
    for (conv, (user, t)) in conversations {
        upsert_totals(&mut stmt, tenant, &conv, &user, &t, None)?;
    }
    Ok(())
}

/// Reads `TOTALS_COLUMNS` starting at column `at`.
fn totals_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UsageTotals> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(at + i)?.max(0) as u64) };
    Ok(UsageTotals {
        calls: u(0)?,
        errors: u(1)?,
        input_tokens: u(2)?,
        output_tokens: u(3)?,
        cost: nanos_at(r, at + 4)?,
        latency_sum_ms: r.get(at + 5)?,
        first_ts: r.get(at + 6)?,
        last_ts: r.get(at + 7)?,
    })
}

const RECORD_COLUMNS: &str = "id, client_id, user_id, conversation_id, job_id, provider, model, input_tokens,
    output_tokens, cached_tokens, reasoning_tokens, latency_ms, ttft_ms, status, error_type, quality_score,
    cost_nanos, cost_source, ts, dedup_ts, received_at, metadata, api_key_id";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredUsage> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let status: String = r.get(13)?;
    let source: String = r.get(17)?;
    let ts: i64 = r.get(18)?;
    let dedup_ts: i64 = r.get(19)?;
    Ok(StoredUsage {
        id: r.get(0)?,
        record: UsageRecord {
            client_id: r.get(1)?,
            user_id: r.get(2)?,
            conversation_id: r.get(3)?,
            job_id: r.get(4)?,
            api_key_id: r
                .get::<_, Option<String>>(22)?
                .map(|k| {
                    k.parse()
                        .map_err(|_| conversion_error(22, format!("api key id {k} is not a UUID")))
                })
                .transpose()?,
            provider: r.get(5)?,
            model: r.get(6)?,
            tokens: tally_core::pricing::TokenUsage {
                input: u(7)?,
                output: u(8)?,
                cached_input: u(9)?,
                reasoning: u(10)?,
            },
            latency_ms: r.get(11)?,
            time_to_first_token_ms: r.get(12)?,
            status: CallStatus::parse(&status)
                .ok_or_else(|| conversion_error(13, format!("unknown status {status}")))?,
            error_type: r.get(14)?,
            quality_score: r.get(15)?,
            cost: nanos_at(r, 16)?,
            cost_source: match source.as_str() {
                "reported" => CostSource::Reported,
                "catalog" => CostSource::Catalog,
                "unpriced" => CostSource::Unpriced,
                _ => {
                    return Err(conversion_error(
                        17,
                        format!("unknown cost source {source}"),
                    ))
                }
            },
            timestamp: ts,
            timestamp_provided: dedup_ts != 0,
            received_at: r.get(20)?,
            metadata: r.get(21)?,
        },
    })
}

/// The WHERE clause and its parameters for a usage filter (tenant is `?1`).
fn filter_sql(tenant: TenantId, f: &UsageFilter) -> (String, Vec<Value>) {
    let mut sql = String::from("tenant_id = ?1");
    let mut args: Vec<Value> = vec![Value::Blob(tenant.0.as_bytes().to_vec())];
    let mut push = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(from) = f.from {
        push(&mut sql, " AND ts >= ?", Value::Integer(from));
    }
    if let Some(to) = f.to {
        push(&mut sql, " AND ts < ?", Value::Integer(to));
    }
    if let Some(c) = f.min_cost {
        push(
            &mut sql,
            " AND cost_nanos >= ?",
            Value::Integer(c.to_i64().unwrap_or(i64::MAX)),
        );
    }
    if let Some(c) = f.max_cost {
        push(
            &mut sql,
            " AND cost_nanos <= ?",
            Value::Integer(c.to_i64().unwrap_or(i64::MAX)),
        );
    }
    if let Some(p) = &f.provider {
        push(&mut sql, " AND provider = ?", Value::Text(p.clone()));
    }
    if !f.models.is_empty() {
        sql.push_str(" AND model IN (");
        for (i, m) in f.models.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            push(&mut sql, "?", Value::Text(m.clone()));
        }
        sql.push(')');
    }
    if let Some(u) = &f.user_id {
        push(&mut sql, " AND user_id = ?", Value::Text(u.clone()));
    }
    if let Some(c) = &f.conversation_id {
        push(&mut sql, " AND conversation_id = ?", Value::Text(c.clone()));
    }
    if let Some(j) = &f.job_id {
        push(&mut sql, " AND job_id = ?", Value::Text(j.clone()));
    }
    if let Some(s) = f.status {
        push(&mut sql, " AND status = ?", Value::Text(s.as_str().into()));
    }
    if let Some(q) = f.min_quality {
        push(&mut sql, " AND quality_score >= ?", Value::Real(q));
    }
    if let Some(g) = f.generation {
        sql.push_str(match g {
            Generation::New => " AND (",
            Generation::Legacy => " AND NOT (",
        });
        for (i, prefix) in NEW_GENERATION_PREFIXES.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            // substr, not LIKE: a prefix is compared as it is, whatever its characters.
            push(
                &mut sql,
                &format!("substr(lower(model), 1, {}) = ?", prefix.len()),
                Value::Text((*prefix).to_owned()),
            );
        }
        sql.push(')');
    }
    if let Some(e) = f.min_cost_efficiency {
        // quality / (cost_nanos / 1e9) >= e, without dividing by a zero cost.
        push(
            &mut sql,
            " AND quality_score IS NOT NULL AND quality_score * 1e9 >= ? * cost_nanos",
            Value::Real(e),
        );
    }
    if let Some(s) = &f.search {
        let pattern = format!(
            "%{}%",
            s.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        args.push(Value::Text(pattern));
        let n = args.len();
        sql.push_str(&format!(
            " AND (lower(model) LIKE ?{n} ESCAPE '\\' OR lower(coalesce(conversation_id, '')) LIKE ?{n} ESCAPE '\\'
               OR lower(coalesce(job_id, '')) LIKE ?{n} ESCAPE '\\' OR lower(coalesce(user_id, '')) LIKE ?{n} ESCAPE '\\'
               OR lower(coalesce(error_type, '')) LIKE ?{n} ESCAPE '\\' OR lower(metadata) LIKE ?{n} ESCAPE '\\')"
        ));
    }
    (sql, args)
}

fn conversation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConversationUsage> {
    Ok(ConversationUsage {
        conversation_id: r.get(0)?,
        user_id: r.get(1)?,
        totals: totals_from_row(r, 2)?,
    })
}

const ROLLUP_COLUMNS: &str = "bucket, provider, model, calls, errors, input_tokens, output_tokens, cached_tokens,
    reasoning_tokens, cost_nanos, latency_sketch, latency_sum_ms, ttft_sketch, ttft_sum_ms, quality_count,
    quality_sum, unpriced_calls";

fn sketch_from(col: usize, bytes: Vec<u8>) -> rusqlite::Result<LatencySketch> {
    LatencySketch::from_bytes(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn rollup_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRollup> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(UsageRollup {
        bucket: r.get(0)?,
        provider: r.get(1)?,
        model: r.get(2)?,
        calls: u(3)?,
        errors: u(4)?,
        tokens: tally_core::pricing::TokenUsage {
            input: u(5)?,
            output: u(6)?,
            cached_input: u(7)?,
            reasoning: u(8)?,
        },
        cost: nanos_at(r, 9)?,
        latency: sketch_from(10, r.get(10)?)?,
        latency_sum_ms: r.get(11)?,
        ttft: sketch_from(12, r.get(12)?)?,
        ttft_sum_ms: r.get(13)?,
        quality_count: u(14)?,
        quality_sum: r.get(15)?,
        unpriced_calls: u(16)?,
    })
}

/// Merges a delta into its stored bucket (sketches merge in Rust, then the row is written).
fn fold_rollup(
    conn: &Connection,
    tenant: TenantId,
    g: Granularity,
    delta: UsageRollup,
) -> StoreResult<()> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {ROLLUP_COLUMNS} FROM llm_usage_rollup
             WHERE tenant_id = ?1 AND granularity = ?2 AND bucket = ?3 AND provider = ?4 AND model = ?5"
        ))?
        .query_row(
            params![tenant.0.as_bytes(), g.as_str(), delta.bucket, delta.provider, delta.model],
            rollup_from_row,
        )
        .optional()?;
    let merged = match existing {
        Some(mut row) => {
            row.merge(&delta)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            row
        }
        None => delta,
    };
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO llm_usage_rollup (tenant_id, granularity, {ROLLUP_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
    ))?
    .execute(params![
        tenant.0.as_bytes(),
        g.as_str(),
        merged.bucket,
        merged.provider,
        merged.model,
        as_i64(merged.calls),
        as_i64(merged.errors),
        as_i64(merged.tokens.input),
        as_i64(merged.tokens.output),
        as_i64(merged.tokens.cached_input),
        as_i64(merged.tokens.reasoning),
        money_column(merged.cost)?,
        merged.latency.to_bytes(),
        merged.latency_sum_ms,
        merged.ttft.to_bytes(),
        merged.ttft_sum_ms,
        as_i64(merged.quality_count),
        merged.quality_sum,
        as_i64(merged.unpriced_calls),
    ])?;
    Ok(())
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn insert_usage(
        &self,
        tenant: TenantId,
        records: std::sync::Arc<[UsageRecord]>,
    ) -> StoreResult<UsageInsert> {
        if records.is_empty() {
            return Ok(UsageInsert {
                outcomes: Vec::new(),
                commit: CommitSeq::default(),
            });
        }
        let weight = records.len();
        self.write_for_weighted(tenant, weight, move |conn, state| {
            Ok(UsageInsert {
                outcomes: insert_tx(conn, &mut state.usage, tenant, &records)?,
                commit: state.commit,
            })
        })
        .await
    }

    async fn usage_count(&self, tenant: TenantId) -> StoreResult<u64> {
        self.read(move |conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM llm_usage WHERE tenant_id = ?1",
                [tenant.0.as_bytes()],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn usage_rollups(
        &self,
        tenant: TenantId,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<UsageRollup>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROLLUP_COLUMNS} FROM llm_usage_rollup
                 WHERE tenant_id = ?1 AND granularity = ?2 AND bucket >= ?3 AND bucket < ?4
                 ORDER BY bucket, provider, model"
            ))?;
            let rows = stmt
                .query_map(
                    params![tenant.0.as_bytes(), granularity.as_str(), from, to],
                    rollup_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn user_usage(
        &self,
        tenant: TenantId,
        from_day: i64,
        to_day: i64,
        user: Option<String>,
        model: Option<String>,
        limit: u32,
    ) -> StoreResult<Vec<UserUsage>> {
        self.read(move |conn| {
            let t = tenant.0.as_bytes();
            // Over all models, or one model's tables (`?5` binds the model there).
            let (daily, monthly, narrow) = match &model {
                None => ("llm_user_daily", "llm_user_monthly INDEXED BY llm_user_monthly_by_cost", ""),
                // A model's users of a month are one primary-key range, sorted when read.
                Some(_) => ("llm_user_model_daily", "llm_user_model_monthly", "AND model = ?5"),
            };
            // The model, bound last when the query is narrowed to it.
            let model_arg: Option<&dyn rusqlite::ToSql> =
                model.as_ref().map(|m| m as &dyn rusqlite::ToSql);
            let candidates: Vec<String> = match user {
                Some(u) => vec![u],
                None => {
                    // Each overlapping month's most expensive users, then exact sums over
                    // the days of the period for those users only.
                    let mut stmt = conn.prepare_cached(&format!(
                        "SELECT user_id FROM {monthly}
                         WHERE tenant_id = ?1 AND month = ?2 {} ORDER BY cost_nanos DESC LIMIT ?3",
                        narrow.replace("?5", "?4")
                    ))?;
                    let per_month = USER_CANDIDATES_PER_MONTH.max(limit.saturating_mul(10));
                    let mut seen = std::collections::HashSet::new();
                    let mut out = Vec::new();
                    for month in month_of_day(from_day)..=month_of_day((to_day - 1).max(from_day)) {
                        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&t, &month, &per_month];
                        args.extend(model_arg);
                        let rows = stmt
                            .query_map(args.as_slice(), |r| r.get::<_, String>(0))?
                            .collect::<Result<Vec<_>, _>>()?;
                        for u in rows {
                            if seen.insert(u.clone()) {
                                out.push(u);
                            }
                        }
                    }
                    out
                }
            };
            // The cost column of `TOTALS_COLUMNS` is a placeholder: the exact sum follows.
            let mut sums = conn.prepare_cached(&format!(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(errors), 0), coalesce(sum(input_tokens), 0),
                        coalesce(sum(output_tokens), 0), 0,
                        coalesce(sum(latency_sum_ms), 0.0), coalesce(min(first_ts), 0), coalesce(max(last_ts), 0),
                        {}
                 FROM {daily} WHERE tenant_id = ?1 AND user_id = ?2 AND day >= ?3 AND day < ?4 {narrow}",
                money_sum_sql("cost_nanos")
            ))?;
            let mut rows = Vec::with_capacity(candidates.len());
            for user_id in candidates {
                let read = |r: &rusqlite::Row<'_>| {
                    Ok(UsageTotals { cost: money_sum_at(r, 8)?, ..totals_from_row(r, 0)? })
                };
                let mut args: Vec<&dyn rusqlite::ToSql> = vec![&t, &user_id, &from_day, &to_day];
                args.extend(model_arg);
                let totals = sums.query_row(args.as_slice(), read)?;
                if totals.calls > 0 {
                    rows.push(UserUsage { user_id, totals });
                }
            }
            rows.sort_by(|a, b| b.totals.cost.cmp(&a.totals.cost).then_with(|| a.user_id.cmp(&b.user_id)));
            rows.truncate(limit as usize);
            Ok(rows)
        })
        .await
    }

    async fn top_conversations(
        &self,
        tenant: TenantId,
        from: i64,
        to: i64,
        limit: u32,
    ) -> StoreResult<Vec<ConversationUsage>> {
        self.read(move |conn| {
            // Candidates: the most expensive conversations (lifetime) with a call in the
            // range, walking the cost index. Each one's cost within the range is then
            // exact: its stored totals when every call is inside the range, else a sum of
            // its raw calls in the range (one index range per conversation).
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT conversation_id, user_id, {TOTALS_COLUMNS}
                 FROM llm_conversations INDEXED BY llm_conversations_by_cost
                 WHERE tenant_id = ?1 AND last_ts >= ?2 AND first_ts < ?3
                 ORDER BY cost_nanos DESC LIMIT ?4"
            ))?;
            let candidates = stmt
                .query_map(
                    params![
                        tenant.0.as_bytes(),
                        from,
                        to,
                        limit.saturating_mul(CONVERSATION_CANDIDATE_FACTOR).max(50)
                    ],
                    conversation_from_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let mut in_range = conn.prepare_cached(&format!(
                "SELECT count(*), coalesce(sum(status != 'success'), 0), coalesce(sum(input_tokens), 0),
                        coalesce(sum(output_tokens), 0), 0, coalesce(sum(latency_ms), 0.0),
                        coalesce(min(ts), 0), coalesce(max(ts), 0), {}
                 FROM llm_usage INDEXED BY llm_usage_by_conversation
                 WHERE tenant_id = ?1 AND conversation_id = ?2 AND ts >= ?3 AND ts < ?4
                   AND status != 'refused'",
                money_sum_sql("cost_nanos")
            ))?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut rows: Vec<ConversationUsage> = Vec::with_capacity(candidates.len());
            let mut kth_best = Nanos::ZERO;
            for mut c in candidates {
                // Candidates come by lifetime cost, an upper bound of their cost in the
                // range: once it falls below the `limit`-th best found, none can enter.
                if rows.len() >= limit as usize && c.totals.cost < kth_best {
                    break;
                }
                if c.totals.first_ts < from || c.totals.last_ts >= to {
                    c.totals = in_range.query_row(
                        params![tenant.0.as_bytes(), c.conversation_id, from, to],
                        |r| Ok(UsageTotals { cost: money_sum_at(r, 8)?, ..totals_from_row(r, 0)? }),
                    )?;
                }
                if c.totals.calls > 0 {
                    rows.push(c);
                    if rows.len() >= limit as usize {
                        let mut costs: Vec<Nanos> = rows.iter().map(|r| r.totals.cost).collect();
                        costs.sort_unstable_by(|a, b| b.cmp(a));
                        kth_best = costs[limit as usize - 1];
                    }
                }
            }
            rows.sort_by(|a, b| {
                b.totals.cost.cmp(&a.totals.cost).then_with(|| a.conversation_id.cmp(&b.conversation_id))
            });
            rows.truncate(limit as usize);
            Ok(rows)
        })
        .await
    }

    async fn active_conversations(&self, tenant: TenantId, since: i64) -> StoreResult<u64> {
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM llm_conversations INDEXED BY llm_conversations_by_last
                     WHERE tenant_id = ?1 AND last_ts >= ?2",
                )?
                .query_row(params![tenant.0.as_bytes(), since], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn conversation(
        &self,
        tenant: TenantId,
        conversation_id: String,
    ) -> StoreResult<Option<ConversationUsage>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT conversation_id, user_id, {TOTALS_COLUMNS} FROM llm_conversations
                     WHERE tenant_id = ?1 AND conversation_id = ?2"
                ))?
                .query_row(
                    params![tenant.0.as_bytes(), conversation_id],
                    conversation_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_usage(
        &self,
        tenant: TenantId,
        filter: UsageFilter,
        offset: u64,
        limit: u32,
        count_cap: u64,
    ) -> StoreResult<(u64, Vec<StoredUsage>)> {
        self.read(move |conn| {
            let (clause, args) = filter_sql(tenant, &filter);
            let mut count_args = args.clone();
            count_args.push(Value::Integer(as_i64(count_cap)));
            let count: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM llm_usage WHERE {clause} LIMIT ?{})",
                    count_args.len()
                ))?
                .query_row(rusqlite::params_from_iter(count_args), |r| r.get(0))?;
            let mut page_args = args;
            page_args.push(Value::Integer(i64::from(limit)));
            page_args.push(Value::Integer(as_i64(offset)));
            let n = page_args.len();
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM llm_usage WHERE {clause}
                     ORDER BY ts DESC, id DESC LIMIT ?{} OFFSET ?{n}",
                    n - 1
                ))?
                .query_map(rusqlite::params_from_iter(page_args), record_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((count.max(0) as u64, rows))
        })
        .await
    }

    async fn price_overrides(&self, tenant: TenantId) -> StoreResult<Vec<ModelPrice>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT provider, model, effective_from, input_per_mtok_nanos, output_per_mtok_nanos,
                        cached_input_per_mtok_nanos
                 FROM price_overrides WHERE tenant_id = ?1 ORDER BY provider, model, effective_from",
            )?;
            let rows = stmt
                .query_map([tenant.0.as_bytes()], |r| {
                    let day: String = r.get(2)?;
                    Ok(ModelPrice {
                        provider: r.get(0)?,
                        model: r.get(1)?,
                        effective_from: NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
                        })?,
                        input_per_mtok: nanos_at(r, 3)?,
                        output_per_mtok: nanos_at(r, 4)?,
                        cached_input_per_mtok: r.get::<_, Option<i64>>(5)?.map(Nanos::from),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn put_price_override(&self, tenant: TenantId, p: ModelPrice) -> StoreResult<()> {
        self.write_for(tenant, move |conn| {
            conn.execute(
                "INSERT INTO price_overrides (tenant_id, provider, model, effective_from, input_per_mtok_nanos,
                     output_per_mtok_nanos, cached_input_per_mtok_nanos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant_id, provider, model, effective_from) DO UPDATE SET
                     input_per_mtok_nanos = excluded.input_per_mtok_nanos,
                     output_per_mtok_nanos = excluded.output_per_mtok_nanos,
                     cached_input_per_mtok_nanos = excluded.cached_input_per_mtok_nanos",
                params![
                    tenant.0.as_bytes(),
                    p.provider.to_ascii_lowercase(),
                    p.model.to_ascii_lowercase(),
                    p.effective_from.to_string(),
                    money_column(p.input_per_mtok)?,
                    money_column(p.output_per_mtok)?,
                    p.cached_input_per_mtok.map(money_column).transpose()?
                ],
            )?;
            Ok(())
        })
        .await
    }
}
