//! Quotas and budgets (seed 000 QuotaStatusDto, seed 003 budget rules).
//!
//! Each tenant's rules and what their current windows have used live in memory, so the
//! gateway can ask "may this call go ahead?" without a database round trip. The state is
//! loaded from the store on first use (rules, then every window's usage read from the
//! rollups in one snapshot together with the last commit it holds) and then kept current
//! by `observe`, which the ingest path calls after each commit with that commit's
//! sequence. Records are added only when their commit is after the snapshot's, so a
//! record is never counted twice nor missed, whatever the interleaving of loads and
//! ingests, and whatever order a backend hands out record ids in. State is dropped (and reloaded)
//! when a window rolls over or the rules change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tally_core::pricing::Nanos;
use tally_core::quota::{
    self, check_unique, crossed, decide, validate_rule, CallScope, Decision, Projection,
    QuotaEvent, QuotaInput, QuotaMetric, QuotaRule, QuotaScope, QuotaStatus, QuotaWindow,
    WindowUsage, MAX_RULES,
};
use tally_core::time::SharedClock;
use tally_core::usage::UsageRecord;
use tally_core::{ApiKeyId, FieldError, TenantId};
use tally_store::{CommitSeq, Stores};

use crate::error::{AiError, AiResult};

/// One rule with what its current window has used.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub rule: QuotaRule,
    /// `[start, end)` of the current window, UTC microseconds.
    pub window: (i64, i64),
    /// In the metric's unit (nano-dollars, tokens or calls).
    pub used: i128,
    /// Held by admitted calls not yet settled, in the same unit (filled in by checks).
    pub reserved: i128,
}

impl Tracked {
    /// Percent of the limit used, one decimal.
    pub fn usage_percent(&self) -> f64 {
        tally_core::activity::round_to(quota::percent(self.used, self.rule.limit), 1)
    }

    pub fn status(&self) -> QuotaStatus {
        quota::status(self.used, self.rule.limit, self.rule.warn_percent)
    }

    /// Where the window ends and when the limit is reached at the pace so far.
    pub fn projection(&self, now: i64) -> Projection {
        quota::project(self.used, self.rule.limit, self.window, now)
    }
}

#[derive(Debug, Clone)]
struct Loaded {
    rules: Vec<Tracked>,
    /// The tenant's whole usage today, for the daily projection.
    today: WindowUsage,
    today_window: (i64, i64),
    /// The last commit the load's snapshot held: records of this commit or an earlier one
    /// were counted by the load.
    loaded_at: CommitSeq,
    /// The state is stale from this instant on (the first window end).
    valid_until: i64,
}

type Slot = Arc<tokio::sync::Mutex<Option<Loaded>>>;

/// A call about to be made, as the gateway (or `POST /ai/quotas/test`) describes it.
#[derive(Debug, Clone)]
pub struct CallEstimate {
    pub provider: String,
    pub model: String,
    pub user_id: Option<String>,
    /// The API key the call is made with.
    pub api_key_id: Option<ApiKeyId>,
    pub cost: Nanos,
    /// Input plus output tokens.
    pub tokens: u64,
}

impl CallEstimate {
    fn scope(&self) -> CallScope<'_> {
        CallScope {
            provider: &self.provider,
            model: &self.model,
            user_id: self.user_id.as_deref(),
            api_key_id: self.api_key_id,
        }
    }
}

/// How one rule judges a call.
#[derive(Debug, Clone)]
pub struct RuleVerdict {
    pub tracked: Tracked,
    /// What the call would add, in the metric's unit.
    pub amount: i128,
    pub decision: Decision,
}

/// Every matching rule's verdict; the call's decision is the strictest of them.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision: Decision,
    pub rules: Vec<RuleVerdict>,
}

/// A snapshot of a tenant's quotas for the status endpoint.
#[derive(Debug, Clone)]
pub struct QuotaSnapshot {
    pub rules: Vec<Tracked>,
    pub today: WindowUsage,
    pub today_window: (i64, i64),
    /// The time the snapshot describes.
    pub at: i64,
}

pub struct Quotas {
    stores: Stores,
    clock: SharedClock,
    slots: Mutex<HashMap<TenantId, Slot>>,
    /// Calls admitted and not yet settled, per tenant: counted by every check until their
    /// reservation is dropped, so concurrent calls cannot together overspend. Kept apart
    /// from the loaded state, which is dropped and reloaded when windows roll over.
    reservations: Arc<Mutex<Reservations>>,
}

#[derive(Default)]
struct Reservations {
    next: u64,
    by_tenant: HashMap<TenantId, HashMap<u64, Reserved>>,
}

#[derive(Debug, Clone)]
struct Reserved {
    call: CallEstimate,
    at: i64,
}

/// An admitted call's estimate, counted against the tenant's quotas until this is dropped.
/// The gateway drops it once the call's actual usage is committed (and so counted), or
/// when the call ends without any.
#[must_use = "a reservation counts until it is dropped"]
pub struct Reservation {
    tenant: TenantId,
    id: u64,
    table: Arc<Mutex<Reservations>>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("id", &self.id).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if let Some(calls) = table.by_tenant.get_mut(&self.tenant) {
            calls.remove(&self.id);
            if calls.is_empty() {
                table.by_tenant.remove(&self.tenant);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How each of the tenant's rules (that match `call`) judges it, counting what its window
/// has used and what admitted calls have reserved.
fn judge(s: &Loaded, reserved: Option<&HashMap<u64, Reserved>>, call: &CallEstimate) -> Verdict {
    let rules: Vec<RuleVerdict> = s
        .rules
        .iter()
        .filter(|t| t.rule.scope.matches(call.scope()))
        .map(|t| {
            let held: i128 = reserved
                .into_iter()
                .flat_map(HashMap::values)
                .filter(|r| {
                    (t.window.0..t.window.1).contains(&r.at) && t.rule.scope.matches(r.call.scope())
                })
                .map(|r| t.rule.metric.amount(r.call.cost, r.call.tokens))
                .sum();
            let amount = t.rule.metric.amount(call.cost, call.tokens);
            let mut tracked = t.clone();
            tracked.reserved = held;
            RuleVerdict {
                decision: decide(&t.rule, t.used + held, amount),
                amount,
                tracked,
            }
        })
        .collect();
    Verdict {
        decision: rules
            .iter()
            .map(|r| r.decision)
            .max()
            .unwrap_or(Decision::Allow),
        rules,
    }
}

impl Quotas {
    pub fn new(stores: Stores, clock: SharedClock) -> Self {
        Self {
            stores,
            clock,
            slots: Mutex::new(HashMap::new()),
            reservations: Arc::default(),
        }
    }

    fn slot(&self, tenant: TenantId) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(tenant).or_default().clone()
    }

    /// Reads the rules and their windows' usage, and records the thresholds already crossed
    /// (once per window: the store ignores repeats).
    async fn load(&self, tenant: TenantId, now: i64) -> AiResult<Loaded> {
        let rules = self.stores.quotas.quota_rules(tenant).await?;
        let today_window = QuotaWindow::Day.bounds(now);
        let mut scopes: Vec<(QuotaScope, i64, i64)> = rules
            .iter()
            .map(|r| {
                let (from, to) = r.window.bounds(now);
                (r.scope.clone(), from, to)
            })
            .collect();
        scopes.push((QuotaScope::default(), today_window.0, today_window.1));
        let (loaded_at, mut usage) = self.stores.quotas.quota_usage(tenant, scopes).await?;
        let today = usage.pop().unwrap_or_default();
        let tracked: Vec<Tracked> = rules
            .into_iter()
            .zip(usage)
            .map(|(rule, u)| Tracked {
                window: rule.window.bounds(now),
                used: rule.metric.of(&u),
                reserved: 0,
                rule,
            })
            .collect();
        let events: Vec<QuotaEvent> = tracked
            .iter()
            .flat_map(|t| {
                crossed(i128::MIN, t.used, t.rule.limit, t.rule.warn_percent)
                    .into_iter()
                    .map(move |threshold| event(t, threshold, now))
            })
            .collect();
        self.stores
            .quotas
            .record_quota_events(tenant, events)
            .await?;
        let valid_until = tracked
            .iter()
            .map(|t| t.window.1)
            .chain([today_window.1])
            .min()
            .unwrap_or(i64::MAX);
        Ok(Loaded {
            rules: tracked,
            today,
            today_window,
            loaded_at,
            valid_until,
        })
    }

    /// Runs `f` on the tenant's current state, loading it first if needed.
    async fn with_state<R>(
        &self,
        tenant: TenantId,
        now: i64,
        f: impl FnOnce(&mut Loaded) -> R,
    ) -> AiResult<R> {
        let slot = self.slot(tenant);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_none_or(|l| now >= l.valid_until) {
            *guard = Some(self.load(tenant, now).await?);
        }
        match guard.as_mut() {
            Some(state) => Ok(f(state)),
            None => Err(AiError::Internal("quota state missing after load".into())),
        }
    }

    /// The tenant's rules and current usage.
    pub async fn snapshot(&self, tenant: TenantId) -> AiResult<QuotaSnapshot> {
        let now = self.clock.now_micros();
        self.with_state(tenant, now, |s| QuotaSnapshot {
            at: now,
            rules: s.rules.clone(),
            today: s.today,
            today_window: s.today_window,
        })
        .await
    }

    /// Would this call pass, warn or be blocked? Answered from memory once the tenant's
    /// state is loaded; calls admitted and not yet settled count.
    pub async fn check(&self, tenant: TenantId, call: &CallEstimate) -> AiResult<Verdict> {
        let now = self.clock.now_micros();
        let table = self.reservations.clone();
        self.with_state(tenant, now, |s| {
            judge(s, lock(&table).by_tenant.get(&tenant), call)
        })
        .await
    }

    /// [`check`](Self::check), and when the call is not blocked, holds its estimate
    /// against every quota until the returned reservation is dropped. Check and hold are
    /// one step: of concurrent calls, each is judged with all those admitted before it.
    pub async fn reserve(
        &self,
        tenant: TenantId,
        call: &CallEstimate,
    ) -> AiResult<(Verdict, Option<Reservation>)> {
        let now = self.clock.now_micros();
        let table = self.reservations.clone();
        self.with_state(tenant, now, |s| {
            let mut t = lock(&table);
            let verdict = judge(s, t.by_tenant.get(&tenant), call);
            if verdict.decision == Decision::Block {
                return (verdict, None);
            }
            t.next += 1;
            let id = t.next;
            t.by_tenant.entry(tenant).or_default().insert(
                id,
                Reserved {
                    call: call.clone(),
                    at: now,
                },
            );
            drop(t);
            let reservation = Reservation {
                tenant,
                id,
                table: table.clone(),
            };
            (verdict, Some(reservation))
        })
        .await
    }

    /// Calls of the tenant admitted and not yet settled.
    pub fn reserved_calls(&self, tenant: TenantId) -> usize {
        lock(&self.reservations)
            .by_tenant
            .get(&tenant)
            .map_or(0, HashMap::len)
    }

    /// Adds the records newly stored by commit `commit` to the tenant's windows and
    /// records the thresholds they cross. A state loaded from a snapshot that already
    /// holds that commit counted them: they are skipped, so every record counts once
    /// whatever the order of loads and commits.
    pub async fn observe(
        &self,
        tenant: TenantId,
        records: &[&UsageRecord],
        commit: CommitSeq,
    ) -> AiResult<()> {
        let now = self.clock.now_micros();
        if records.is_empty() {
            return Ok(());
        }
        let events = self
            .with_state(tenant, now, |s| {
                let mut events = Vec::new();
                if commit <= s.loaded_at {
                    return events;
                }
                for r in records.iter().filter(|r| r.status.was_called()) {
                    if (s.today_window.0..s.today_window.1).contains(&r.timestamp) {
                        s.today.calls += 1;
                        s.today.tokens += r.tokens.input + r.tokens.output;
                        s.today.cost += r.cost;
                    }
                    for t in &mut s.rules {
                        if !(t.window.0..t.window.1).contains(&r.timestamp) || !t.rule.counts(r) {
                            continue;
                        }
                        let before = t.used;
                        t.used += t.rule.amount_of(r);
                        for threshold in crossed(before, t.used, t.rule.limit, t.rule.warn_percent)
                        {
                            events.push(event(t, threshold, now));
                        }
                    }
                }
                events
            })
            .await?;
        let recorded = match self.stores.quotas.record_quota_events(tenant, events).await {
            Ok(r) => r,
            Err(e) => {
                // Drop the state: the next use reloads it, and a load records every
                // threshold already reached, so these events are not lost.
                *self.slot(tenant).lock().await = None;
                return Err(e.into());
            }
        };
        for e in &recorded {
            tracing::warn!(tenant = %tenant.0, rule = e.rule_id, threshold = e.threshold,
                used = e.used, limit = e.limit, "quota threshold crossed");
        }
        Ok(())
    }

    /// Validates and stores a tenant's whole quota configuration, replacing the previous
    /// one. Rules keep their id (and history) when their metric, window and scope stay.
    pub async fn configure(
        &self,
        tenant: TenantId,
        inputs: Vec<Result<QuotaInput, FieldError>>,
    ) -> AiResult<Vec<QuotaRule>> {
        let now = self.clock.now_micros();
        if inputs.len() > MAX_RULES {
            return Err(AiError::TooManyRules(format!(
                "quotas holds {} rules; the limit is {MAX_RULES}",
                inputs.len()
            )));
        }
        let rules = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| input.and_then(|q| validate_rule(q, &format!("quotas[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique(&rules)?;
        if rules.iter().any(|r| r.scope.api_key_id.is_some()) {
            // A rule may only name one of the tenant's own keys: another tenant's key id is
            // as unknown here as a made-up one.
            let keys = self.stores.identity.list_api_keys(tenant).await?;
            for (i, r) in rules.iter().enumerate() {
                if let Some(k) = r.scope.api_key_id {
                    if !keys.iter().any(|key| key.id == k) {
                        return Err(FieldError::invalid(
                            format!("quotas[{i}].api_key_id"),
                            "is not one of this tenant's API keys",
                        )
                        .into());
                    }
                }
            }
        }
        let slot = self.slot(tenant);
        let mut guard = slot.lock().await;
        let stored = self
            .stores
            .quotas
            .replace_quota_rules(tenant, rules, now)
            .await?;
        *guard = None;
        Ok(stored)
    }

    /// Drops what is held in memory for the tenant (after its data was deleted or a user
    /// erased); the next check reloads from the store.
    pub fn forget(&self, tenant: TenantId) {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&tenant);
    }

    pub async fn events(&self, tenant: TenantId, limit: u32) -> AiResult<Vec<QuotaEvent>> {
        Ok(self.stores.quotas.quota_events(tenant, limit).await?)
    }
}

fn event(t: &Tracked, threshold: u8, now: i64) -> QuotaEvent {
    QuotaEvent {
        id: 0,
        rule_id: t.rule.id,
        rule_name: t.rule.name.clone(),
        metric: t.rule.metric,
        window_start: t.window.0,
        threshold,
        // At a crossing, usage is at most the limit plus one record: it fits the column.
        used: i64::try_from(t.used).unwrap_or(i64::MAX),
        limit: t.rule.limit,
        ts: now,
    }
}

/// An amount in a metric's unit as the API shows it: USD (6 decimals) for cost, else the
/// count.
pub fn display_amount(metric: QuotaMetric, amount: i128) -> f64 {
    match metric {
        QuotaMetric::CostUsd => Nanos(amount).usd_rounded(6),
        QuotaMetric::Tokens | QuotaMetric::Requests => amount as f64,
    }
}

/// Whether `t` is a tenant-wide USD budget on `window` (seed 000's daily and monthly limit).
pub fn is_tenant_budget(t: &Tracked, window: QuotaWindow) -> bool {
    t.rule.metric == QuotaMetric::CostUsd
        && t.rule.window == window
        && t.rule.scope.is_tenant_wide()
}
