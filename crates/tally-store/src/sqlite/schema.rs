//! Embedded migrations, applied in order at open; `PRAGMA user_version` records progress.

use rusqlite::Connection;

use crate::{StoreError, StoreResult};

const MIGRATIONS: &[&str] = &[
    // 1: tenancy, events and their rollups.
    r#"
    CREATE TABLE tenants (
        id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        max_events INTEGER,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE accounts (
        id BLOB PRIMARY KEY,
        tenant_id BLOB NOT NULL REFERENCES tenants(id),
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE api_keys (
        id BLOB PRIMARY KEY,
        tenant_id BLOB NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        prefix TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX api_keys_by_tenant ON api_keys(tenant_id, created_at);

    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE tracked_users (
        tenant_id BLOB NOT NULL,
        user_id TEXT NOT NULL,
        email TEXT,
        full_name TEXT,
        role TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id)
    ) WITHOUT ROWID;

    CREATE TABLE projects (
        tenant_id BLOB NOT NULL,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        organization_name TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, project_id)
    ) WITHOUT ROWID;

    -- Raw events. Indexes are chosen for append locality: each starts with the tenant and
    -- ends with the event time, so a commit touches few pages per index.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        tracking_id BLOB NOT NULL,
        client_id TEXT,
        dedup_ts INTEGER NOT NULL DEFAULT 0,
        event_type INTEGER NOT NULL,
        event_name TEXT NOT NULL,
        user_id TEXT,
        project_id TEXT,
        ts INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        properties TEXT NOT NULL,
        context TEXT NOT NULL,
        enriched TEXT NOT NULL
    );
    CREATE INDEX events_by_time ON events(tenant_id, ts);
    CREATE INDEX events_by_project ON events(tenant_id, project_id, ts) WHERE project_id IS NOT NULL;
    CREATE INDEX events_by_type ON events(tenant_id, event_type, ts);
    -- Tracking ids are UUIDv7 (time-ordered), so this index also appends.
    CREATE UNIQUE INDEX events_by_tracking_id ON events(tracking_id);
    -- Idempotency: a client id is unique per tenant and client timestamp (0 when the client
    -- sent none). Keying on the timestamp keeps inserts local instead of random.
    CREATE UNIQUE INDEX events_dedup ON events(tenant_id, dedup_ts, client_id) WHERE client_id IS NOT NULL;

    -- Events by tracked user: a manual index kept by the writer in sorted bulk flushes
    -- (`user_index.rs`). Day first: today's entries of users with few events share leaf
    -- pages, so a flush dirties far fewer pages than one per active user. Covering:
    -- listing filters by project and type without reading the row.
    CREATE TABLE user_events (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, user_id, ts, event_id)
    ) WITHOUT ROWID;

    -- Daily rollup, maintained in the same transaction as the raw rows.
    CREATE TABLE activity_daily (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, project_id, event_type)
    ) WITHOUT ROWID;

    -- Hourly rollup per tracked user, flushed with `user_events`, day first likewise.
    CREATE TABLE user_activity_hourly (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        event_name TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, user_id, hour, project_id, event_type, event_name)
    ) WITHOUT ROWID;
    "#,
    // 2: LLM usage records (seeds 000 and 003) and per-tenant price overrides.
    r#"
    CREATE TABLE llm_usage (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        client_id TEXT,
        dedup_ts INTEGER NOT NULL DEFAULT 0,
        user_id TEXT,
        conversation_id TEXT,
        job_id TEXT,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        latency_ms REAL,
        ttft_ms REAL,
        status TEXT NOT NULL,
        error_type TEXT,
        quality_score REAL,
        -- Exact money: nano-dollars.
        cost_nanos INTEGER NOT NULL,
        cost_source TEXT NOT NULL,
        ts INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        metadata TEXT NOT NULL
    );
    CREATE INDEX llm_usage_by_time ON llm_usage(tenant_id, ts);
    CREATE INDEX llm_usage_by_conversation ON llm_usage(tenant_id, conversation_id, ts)
        WHERE conversation_id IS NOT NULL;
    CREATE UNIQUE INDEX llm_usage_dedup ON llm_usage(tenant_id, dedup_ts, client_id)
        WHERE client_id IS NOT NULL;

    CREATE TABLE price_overrides (
        tenant_id BLOB NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        effective_from TEXT NOT NULL,
        input_per_mtok_nanos INTEGER NOT NULL,
        output_per_mtok_nanos INTEGER NOT NULL,
        cached_input_per_mtok_nanos INTEGER,
        PRIMARY KEY (tenant_id, provider, model, effective_from)
    ) WITHOUT ROWID;
    "#,
    // 3: LLM usage rollups per minute, hour and day, folded with the raw rows.
    r#"
    CREATE TABLE llm_usage_rollup (
        tenant_id BLOB NOT NULL,
        granularity TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_sketch BLOB NOT NULL,
        latency_sum_ms REAL NOT NULL,
        ttft_sketch BLOB NOT NULL,
        ttft_sum_ms REAL NOT NULL,
        quality_count INTEGER NOT NULL,
        quality_sum REAL NOT NULL,
        unpriced_calls INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, granularity, bucket, provider, model)
    ) WITHOUT ROWID;
    "#,
    // 4: LLM usage by user (per day) and by conversation, folded with the raw rows;
    // quota rules and the quota events raised when usage crosses their thresholds.
    r#"
    CREATE TABLE llm_user_daily (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id, day)
    ) WITHOUT ROWID;

    -- Per user and calendar month (months since 1970-01): finds the candidates of a
    -- period's most expensive users without reading every user-day of the period.
    CREATE TABLE llm_user_monthly (
        tenant_id BLOB NOT NULL,
        month INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        calls INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, month, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX llm_user_monthly_by_cost ON llm_user_monthly(tenant_id, month, cost_nanos DESC);

    CREATE TABLE llm_conversations (
        tenant_id BLOB NOT NULL,
        conversation_id TEXT NOT NULL,
        user_id TEXT,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, conversation_id)
    ) WITHOUT ROWID;
    CREATE INDEX llm_conversations_by_cost ON llm_conversations(tenant_id, cost_nanos DESC);
    CREATE INDEX llm_conversations_by_last ON llm_conversations(tenant_id, last_ts);

    CREATE TABLE quota_rules (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        name TEXT NOT NULL,
        metric TEXT NOT NULL,
        window_kind TEXT NOT NULL,
        limit_value INTEGER NOT NULL,
        -- '' when the rule is not narrowed by that dimension (so UNIQUE applies).
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        user_id TEXT NOT NULL,
        warn_percent INTEGER NOT NULL,
        enforce INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (tenant_id, metric, window_kind, provider, model, user_id)
    );

    CREATE TABLE quota_events (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        rule_id INTEGER NOT NULL,
        rule_name TEXT NOT NULL,
        metric TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        used INTEGER NOT NULL,
        limit_value INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        UNIQUE (tenant_id, rule_id, window_start, threshold)
    );
    "#,
    // 5: the tracked-user structures move to their own database file (`user_index.rs`),
    // folded there by a thread of their own; it rebuilds them from `events`.
    r#"
    DROP TABLE user_events;
    DROP TABLE user_activity_hourly;
    DELETE FROM settings WHERE key = 'user_index.watermark';
    "#,
    // 6: events and their indexes name the tenant by a small integer key instead of its
    // 16-byte id: shorter index entries and integer comparisons on the write path, where
    // key comparisons were over a third of the writer's time.
    r#"
    CREATE TABLE tenant_keys (
        key INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL UNIQUE
    );
    INSERT INTO tenant_keys (tenant_id) SELECT id FROM tenants ORDER BY created_at, id;
    INSERT OR IGNORE INTO tenant_keys (tenant_id) SELECT DISTINCT tenant_id FROM events;

    CREATE TABLE events_v6 (
        id INTEGER PRIMARY KEY,
        tenant_key INTEGER NOT NULL,
        tracking_id BLOB NOT NULL,
        client_id TEXT,
        dedup_ts INTEGER NOT NULL DEFAULT 0,
        event_type INTEGER NOT NULL,
        event_name TEXT NOT NULL,
        user_id TEXT,
        project_id TEXT,
        ts INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        properties TEXT NOT NULL,
        context TEXT NOT NULL,
        enriched TEXT NOT NULL
    );
    INSERT INTO events_v6 (id, tenant_key, tracking_id, client_id, dedup_ts, event_type,
        event_name, user_id, project_id, ts, received_at, properties, context, enriched)
    SELECT e.id, k.key, e.tracking_id, e.client_id, e.dedup_ts, e.event_type, e.event_name,
        e.user_id, e.project_id, e.ts, e.received_at, e.properties, e.context, e.enriched
    FROM events e JOIN tenant_keys k ON k.tenant_id = e.tenant_id ORDER BY e.id;
    DROP TABLE events;
    ALTER TABLE events_v6 RENAME TO events;
    CREATE INDEX events_by_time ON events(tenant_key, ts);
    CREATE INDEX events_by_project ON events(tenant_key, project_id, ts) WHERE project_id IS NOT NULL;
    CREATE INDEX events_by_type ON events(tenant_key, event_type, ts);
    CREATE UNIQUE INDEX events_by_tracking_id ON events(tracking_id);
    CREATE UNIQUE INDEX events_dedup ON events(tenant_key, dedup_ts, client_id) WHERE client_id IS NOT NULL;
    "#,
    // 7: LLM usage by user and model (per day, and per month for ranking candidates), so a
    // model's cost breakdown ranks that model's users; backfilled from the raw records.
    r#"
    CREATE TABLE llm_user_model_daily (
        tenant_id BLOB NOT NULL,
        model TEXT NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, model, user_id, day)
    ) WITHOUT ROWID;
    CREATE TABLE llm_user_model_monthly (
        tenant_id BLOB NOT NULL,
        model TEXT NOT NULL,
        month INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        calls INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, model, month, user_id)
    ) WITHOUT ROWID;
    -- No index by cost: a model's users of a month are one key range, sorted when read,
    -- and an index keyed by a changing cost would be rewritten on every commit.
    -- Costs are summed as whole dollars plus remaining nano-dollars (neither sum can
    -- overflow); records stored before costs were capped could pass 64 bits together, and
    -- those totals are held at the largest storable amount instead of failing the upgrade.
    INSERT INTO llm_user_model_daily
    SELECT tenant_id, model, ts / 86400000000 - (ts < 0 AND ts % 86400000000 != 0), user_id,
           count(*), sum(status != 'success'), sum(input_tokens), sum(output_tokens),
           CASE WHEN sum(cost_nanos / 1000000000) >= 9223372035 THEN 9223372036854775807
                ELSE sum(cost_nanos / 1000000000) * 1000000000 + sum(cost_nanos % 1000000000) END,
           coalesce(sum(latency_ms), 0.0), min(ts), max(ts)
    FROM llm_usage WHERE user_id IS NOT NULL GROUP BY 1, 2, 3, 4;
    INSERT INTO llm_user_model_monthly
    SELECT tenant_id, model, m, user_id, sum(calls),
           CASE WHEN sum(cost_nanos / 1000000000) >= 9223372035 THEN 9223372036854775807
                ELSE sum(cost_nanos / 1000000000) * 1000000000 + sum(cost_nanos % 1000000000) END
    FROM (
        SELECT tenant_id, model, user_id, calls, cost_nanos,
               (CAST(strftime('%Y', day * 86400, 'unixepoch') AS INTEGER) - 1970) * 12
                 + CAST(strftime('%m', day * 86400, 'unixepoch') AS INTEGER) - 1 AS m
        FROM llm_user_model_daily)
    GROUP BY tenant_id, model, m, user_id;
    "#,
    // 8: revocable sessions, disabled accounts, and the audit trail.
    r#"
    ALTER TABLE accounts ADD COLUMN disabled_at INTEGER;
    ALTER TABLE accounts ADD COLUMN session_version INTEGER NOT NULL DEFAULT 0;

    -- Sessions ended by logout, until their tokens expire (Unix seconds).
    CREATE TABLE revoked_sessions (
        session_id BLOB PRIMARY KEY,
        account_id BLOB NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX revoked_sessions_by_account ON revoked_sessions(account_id);

    -- Append-only: what was done, by whom, from where. Not tied to the rows it describes,
    -- so it outlives their deletion. `tenant_id` is NULL for platform-wide actions.
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        tenant_id BLOB,
        actor TEXT NOT NULL,
        actor_label TEXT,
        ip TEXT,
        action TEXT NOT NULL,
        target TEXT,
        outcome TEXT NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX audit_by_tenant ON audit_log(tenant_id, id);
    CREATE INDEX audit_by_time ON audit_log(at);
    "#,
    // 9: purges of the user index decided by a committed deletion and not yet done there
    // (the index is another file); run again at open until done.
    r#"
    CREATE TABLE pending_purges (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        user_id TEXT
    );
    "#,
    // 10: the commit sequence (`writer.rs`): a counter every write transaction moves on
    // inside itself, so a snapshot can say which commits it holds without relying on ids
    // being handed out in commit order.
    r#"
    CREATE TABLE commit_log (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq INTEGER NOT NULL
    );
    INSERT INTO commit_log (one, seq) VALUES (1, 0);
    "#,
    // 11: which events each commit inserted (those of tracked users), so the user index
    // can fold exactly the commits it has not folded, by commit sequence, after a crash.
    // Rows of folded commits are pruned by the writer.
    r#"
    CREATE TABLE event_commits (
        seq INTEGER PRIMARY KEY,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL
    );
    -- Rows up to this commit were pruned: an index whose watermark is below it cannot be
    -- completed from them and is rebuilt.
    ALTER TABLE commit_log ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
    "#,
    // 12: the gateway's provider credentials (sealed by the gateway: no secret in clear)
    // and each tenant's gateway settings document.
    r#"
    CREATE TABLE ai_credentials (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        base_url TEXT,
        sealed BLOB NOT NULL,
        key_version INTEGER NOT NULL,
        masked TEXT NOT NULL,
        models TEXT NOT NULL,
        weight INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (tenant_id, name)
    );
    CREATE TABLE gateway_settings (
        tenant_id BLOB PRIMARY KEY,
        body TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
    // 13: budgets scoped to one API key. Each record names the key it was made or
    // reported with (the gateway kept it in the metadata until now: it moves to the
    // column, for the gateway's own records naming one of their tenant's keys; what a
    // client wrote in its metadata stays there), usage is summed per key and day, and a
    // quota rule may name a key (the rules table is rebuilt: its UNIQUE constraint takes
    // the new column).
    r#"
    ALTER TABLE llm_usage ADD COLUMN api_key_id TEXT;
    UPDATE llm_usage SET api_key_id = json_extract(metadata, '$.api_key_id'),
                         metadata = json_remove(metadata, '$.api_key_id')
        WHERE json_valid(metadata)
          AND json_extract(metadata, '$.source') = 'gateway'
          AND json_type(metadata, '$.api_key_id') = 'text'
          AND EXISTS (SELECT 1 FROM api_keys k WHERE k.tenant_id = llm_usage.tenant_id
                        AND lower(hex(k.id)) = replace(lower(json_extract(llm_usage.metadata, '$.api_key_id')), '-', ''));

    CREATE TABLE llm_key_daily (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        api_key_id TEXT NOT NULL,
        calls INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_nanos INTEGER NOT NULL,
        latency_sum_ms REAL NOT NULL,
        first_ts INTEGER NOT NULL,
        last_ts INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, api_key_id, day)
    ) WITHOUT ROWID;
    INSERT INTO llm_key_daily
    SELECT tenant_id, ts / 86400000000 - (ts < 0 AND ts % 86400000000 != 0), api_key_id,
           count(*), sum(status != 'success'), sum(input_tokens), sum(output_tokens),
           CASE WHEN sum(cost_nanos / 1000000000) >= 9223372035 THEN 9223372036854775807
                ELSE sum(cost_nanos / 1000000000) * 1000000000 + sum(cost_nanos % 1000000000) END,
           coalesce(sum(latency_ms), 0.0), min(ts), max(ts)
    FROM llm_usage WHERE api_key_id IS NOT NULL GROUP BY 1, 2, 3;

    CREATE TABLE quota_rules_13 (
        id INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        name TEXT NOT NULL,
        metric TEXT NOT NULL,
        window_kind TEXT NOT NULL,
        limit_value INTEGER NOT NULL,
        -- '' when the rule is not narrowed by that dimension (so UNIQUE applies).
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        user_id TEXT NOT NULL,
        api_key_id TEXT NOT NULL,
        warn_percent INTEGER NOT NULL,
        enforce INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (tenant_id, metric, window_kind, provider, model, user_id, api_key_id)
    );
    INSERT INTO quota_rules_13
    SELECT id, tenant_id, name, metric, window_kind, limit_value, provider, model, user_id, '',
           warn_percent, enforce, updated_at
    FROM quota_rules;
    DROP TABLE quota_rules;
    ALTER TABLE quota_rules_13 RENAME TO quota_rules;
    "#,
];

/// The user index's own database (`user_index.rs`): derived data, rebuilt from `events`
/// when missing. Day first: today's entries of users with few events share leaf pages, so
/// a fold dirties far fewer pages than one per active user.
pub(crate) const USER_INDEX_MIGRATIONS: &[&str] = &[
    r#"
    -- Events by tracked user. Covering: listing filters by project and type without
    -- reading the event row.
    CREATE TABLE user_events (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        event_id INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, user_id, ts, event_id)
    ) WITHOUT ROWID;

    -- Hourly rollup per tracked user.
    CREATE TABLE user_activity_hourly (
        tenant_id BLOB NOT NULL,
        day INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        project_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        event_name TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, day, user_id, hour, project_id, event_type, event_name)
    ) WITHOUT ROWID;

    -- The highest event id folded into both tables (one row).
    CREATE TABLE fold_watermark (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        event_id INTEGER NOT NULL
    );
    INSERT INTO fold_watermark (one, event_id) VALUES (1, 0);
    "#,
    // The watermark becomes a commit sequence (`commit_log`); -1 until the index has been
    // rebuilt under it, which the next open does.
    r#"
    ALTER TABLE fold_watermark ADD COLUMN commit_seq INTEGER NOT NULL DEFAULT -1;
    "#,
];

/// Applies the main database's migrations.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    apply(conn, MIGRATIONS)
}

/// Fails unless the main database's schema is the one this build writes (a guest never
/// migrates).
pub(crate) fn require_current(conn: &Connection) -> StoreResult<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let expected = MIGRATIONS.len() as i64;
    if current != expected {
        return Err(StoreError::Unavailable(format!(
            "the database schema is at version {current} and this tally writes version \
             {expected}; only the process that owns the data dir migrates it"
        )));
    }
    Ok(())
}

/// Applies the migrations of `list` that `conn`'s database has not seen yet, each in its
/// own write transaction, which re-reads the version first: a process that waited for the
/// lock finds the work done instead of repeating it.
pub(crate) fn apply(conn: &mut Connection, list: &[&str]) -> StoreResult<()> {
    for (i, sql) in list.iter().enumerate() {
        let version = i as i64 + 1;
        let seen: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version <= seen {
            continue;
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version <= current {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied storage migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Usage stored before migration 7 is counted per user and model by the backfill: days
    /// and months as the write path computes them (including before 1970).
    #[test]
    fn usage_is_backfilled_per_user_and_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        apply(&mut conn, &MIGRATIONS[..6]).unwrap();
        let day = 86_400_000_000i64;
        // 2024-01-31 10:00 and 2024-02-01 01:00 (two months), and 1969-12-31 23:00.
        let (jan31, feb1, before) = (
            19_753 * day + 10 * 3_600_000_000,
            19_754 * day + 3_600_000_000,
            -3_600_000_000,
        );
        for (ts, model, cost, status) in [
            (jan31, "o3", 5, "success"),
            (jan31, "o3", 7, "error"),
            (feb1, "o3", 11, "success"),
            (jan31, "gpt-4o", 13, "success"),
            (before, "o3", 17, "success"),
        ] {
            conn.execute(
                "INSERT INTO llm_usage (tenant_id, user_id, provider, model, input_tokens, output_tokens,
                     cached_tokens, reasoning_tokens, latency_ms, status, cost_nanos, cost_source, ts, received_at, metadata)
                 VALUES (x'01', 'alice', 'openai', ?1, 10, 1, 0, 0, 100.0, ?2, ?3, 'reported', ?4, 0, '{}')",
                rusqlite::params![model, status, cost, ts],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let daily: Vec<(String, i64, i64, i64, i64)> = conn
            .prepare("SELECT model, day, calls, errors, cost_nanos FROM llm_user_model_daily ORDER BY model, day")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            daily,
            vec![
                ("gpt-4o".into(), 19_753, 1, 0, 13),
                ("o3".into(), -1, 1, 0, 17),
                ("o3".into(), 19_753, 2, 1, 12),
                ("o3".into(), 19_754, 1, 0, 11),
            ]
        );
        // Months since 1970-01: 2024-01 = 648, 2024-02 = 649, 1969-12 = -1.
        let monthly: Vec<(String, i64, i64, i64)> = conn
            .prepare("SELECT model, month, calls, cost_nanos FROM llm_user_model_monthly ORDER BY model, month")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            monthly,
            vec![
                ("gpt-4o".into(), 648, 1, 13),
                ("o3".into(), -1, 1, 17),
                ("o3".into(), 648, 2, 12),
                ("o3".into(), 649, 1, 11)
            ]
        );
    }

    /// Gateway records stored before migration 13 named their key in the metadata: the key
    /// moves to its column and is summed per day; quota rules keep their ids and history.
    #[test]
    fn api_keys_move_from_the_metadata_to_their_column_and_daily_sums() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        apply(&mut conn, &MIGRATIONS[..12]).unwrap();
        let day = 86_400_000_000i64;
        let key = "0190c5a4-7d2e-7b3c-9a1d-5e6f7a8b9c0d";
        let other = "0190c5a4-7d2e-7b3c-9a1d-000000000000";
        conn.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (x'01', 'a', 0), (x'02', 'b', 0);
             INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, scopes, created_at)
             VALUES (x'0190c5a47d2e7b3c9a1d5e6f7a8b9c0d', x'01', 'k', 'p1', 'h', 'gateway', 0),
                    (x'0190c5a47d2e7b3c9a1d000000000000', x'02', 'k', 'p2', 'h', 'gateway', 0);",
        )
        .unwrap();
        let gw = |k: &str| format!(r#"{{"source":"gateway","api_key_id":"{k}"}}"#);
        for (ts, cost, status, meta) in [
            (20_000 * day + 5, 5, "success", gw(key)),
            (20_000 * day + 9, 7, "error", gw(key)),
            (20_001 * day, 11, "success", gw(key)),
            // Not a key id, a client's own metadata, another tenant's key: left alone.
            (
                20_000 * day,
                13,
                "success",
                r#"{"source":"gateway","api_key_id":42}"#.to_owned(),
            ),
            (
                20_000 * day,
                17,
                "success",
                format!(r#"{{"api_key_id":"{key}"}}"#),
            ),
            (20_000 * day, 19, "success", gw(other)),
        ] {
            conn.execute(
                "INSERT INTO llm_usage (tenant_id, provider, model, input_tokens, output_tokens,
                     cached_tokens, reasoning_tokens, latency_ms, status, cost_nanos, cost_source, ts, received_at, metadata)
                 VALUES (x'01', 'openai', 'gpt-4o', 10, 1, 0, 0, 100.0, ?1, ?2, 'reported', ?3, 0, ?4)",
                rusqlite::params![status, cost, ts, meta],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO quota_rules (id, tenant_id, name, metric, window_kind, limit_value, provider, model,
                 user_id, warn_percent, enforce, updated_at)
             VALUES (4, x'01', 'daily', 'cost_usd', 'day', 10, '', '', '', 80, 1, 0)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let records: Vec<(Option<String>, String)> = conn
            .prepare("SELECT api_key_id, metadata FROM llm_usage ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            records,
            vec![
                (Some(key.into()), r#"{"source":"gateway"}"#.into()),
                (Some(key.into()), r#"{"source":"gateway"}"#.into()),
                (Some(key.into()), r#"{"source":"gateway"}"#.into()),
                (None, r#"{"source":"gateway","api_key_id":42}"#.into()),
                (None, format!(r#"{{"api_key_id":"{key}"}}"#)),
                (None, gw(other)),
            ]
        );
        let daily: Vec<(i64, i64, i64, i64)> = conn
            .prepare("SELECT day, calls, errors, cost_nanos FROM llm_key_daily ORDER BY day")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(daily, vec![(20_000, 2, 1, 12), (20_001, 1, 0, 11)]);
        let rule: (i64, String, String) = conn
            .query_row("SELECT id, name, api_key_id FROM quota_rules", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(rule, (4, "daily".into(), String::new()));
    }

    /// Events stored before migration 6 keep their ids, tenants and every column.
    #[test]
    fn events_move_to_integer_tenant_keys_intact() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        apply(&mut conn, &MIGRATIONS[..5]).unwrap();
        conn.execute_batch(
            "INSERT INTO tenants (id, name, created_at) VALUES (x'01', 'a', 1), (x'02', 'b', 2);
             INSERT INTO events (id, tenant_id, tracking_id, client_id, dedup_ts, event_type,
                 event_name, user_id, project_id, ts, received_at, properties, context, enriched)
             VALUES (7, x'02', x'aa', 'c1', 5, 1, 'n', 'u', 'p', 10, 11, '{}', '{\"c\":1}', '{}'),
                    (9, x'01', x'bb', NULL, 0, 2, 'm', NULL, NULL, 12, 13, '{}', '{}', '{}');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        type Row = (i64, Vec<u8>, Option<String>, String, i64);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT e.id, k.tenant_id, e.client_id, e.context, e.ts FROM events e
                 JOIN tenant_keys k ON k.key = e.tenant_key ORDER BY e.id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (7, vec![2], Some("c1".into()), r#"{"c":1}"#.into(), 10),
                (9, vec![1], None, "{}".into(), 12),
            ]
        );
        // The idempotency index survived the rebuild.
        let dup = conn.execute(
            "INSERT INTO events (tenant_key, tracking_id, client_id, dedup_ts, event_type,
                 event_name, ts, received_at, properties, context, enriched)
             SELECT key, x'cc', 'c1', 5, 1, 'n', 10, 11, '{}', '{}', '{}' FROM tenant_keys
             WHERE tenant_id = x'02'",
            [],
        );
        assert!(
            dup.is_err(),
            "a second (tenant, ts, client id) must be refused"
        );
    }
}
