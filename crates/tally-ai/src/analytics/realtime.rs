//! The last five minutes (seed 000 `RealTimePerformanceDto`): activity and each provider's
//! status against its 24-hour baseline.

use super::*;

// ---------------------------------------------------------------------------------------
// Real time (seed 000 RealTimePerformanceDto)

#[derive(Serialize, utoipa::ToSchema)]
pub struct RealtimeCurrent {
    pub active_conversations: u64,
    pub messages_per_minute: f64,
    pub avg_response_time: Option<f64>,
    pub active_providers: Vec<String>,
    pub error_rate: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderStatus {
    pub provider: String,
    /// `healthy`, `degraded`, `down`, or `idle` (no call in the window, some in the last 24 h).
    pub status: &'static str,
    pub response_time: Option<f64>,
    pub error_rate: f64,
    pub calls: u64,
    /// The 24-hour average response time the window is compared with.
    pub baseline_response_time: Option<f64>,
    pub reason: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Realtime {
    pub timestamp: String,
    pub window_minutes: i64,
    pub current: RealtimeCurrent,
    pub provider_status: Vec<ProviderStatus>,
    /// Calls per minute over the window, oldest first.
    pub per_minute: Vec<MinutePoint>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MinutePoint {
    pub minute: String,
    pub calls: u64,
    pub errors: u64,
    pub avg_response_time: Option<f64>,
}

pub const REALTIME_MINUTES: i64 = 5;
/// Error rate at or above which a provider is degraded, and down.
pub const DEGRADED_ERROR_RATE: f64 = 0.05;
pub const DOWN_ERROR_RATE: f64 = 0.5;
/// Average latency at or above this multiple of the 24-hour average is degraded.
pub const DEGRADED_LATENCY_FACTOR: f64 = 2.0;

/// The status a provider's recent calls give it against its own 24-hour baseline.
pub fn provider_status(
    recent: &UsageRollup,
    baseline_avg_ms: Option<f64>,
) -> (&'static str, Option<String>) {
    if recent.calls == 0 {
        return ("idle", None);
    }
    let rate = recent.errors as f64 / recent.calls as f64;
    if rate >= DOWN_ERROR_RATE && recent.calls >= 3 {
        return (
            "down",
            Some(format!(
                "{:.0} % of the last {} calls failed",
                rate * 100.0,
                recent.calls
            )),
        );
    }
    if rate >= DEGRADED_ERROR_RATE {
        return (
            "degraded",
            Some(format!(
                "{:.1} % of the last {} calls failed",
                rate * 100.0,
                recent.calls
            )),
        );
    }
    if let (Some(now), Some(base)) = (avg_latency(recent), baseline_avg_ms) {
        if base > 0.0 && now >= base * DEGRADED_LATENCY_FACTOR {
            return (
                "degraded",
                Some(format!(
                    "average response time {now} ms is {:.1}× the 24-hour average",
                    now / base
                )),
            );
        }
    }
    ("healthy", None)
}

impl Analytics {
    pub async fn realtime(&self, tenant: TenantId) -> AiResult<Realtime> {
        let now = self.clock.now_micros();
        let to = now.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE + MICROS_PER_MINUTE;
        let from = to - REALTIME_MINUTES * MICROS_PER_MINUTE;
        let minutes = self
            .stores
            .usage
            .usage_rollups(tenant, Granularity::Minute, from, to)
            .await?;
        let baseline = self
            .usage
            .totals(tenant, Period::last_hours(now, 24))
            .await?;
        let baseline_by_provider = by_provider(&baseline)?;
        let mut recent: BTreeMap<String, UsageRollup> = BTreeMap::new();
        for r in &minutes {
            merge_into(&mut recent, r.provider.clone(), r)?;
        }
        let mut all = UsageRollup::default();
        for r in recent.values() {
            all.merge(r).map_err(AiError::internal)?;
        }
        let mut statuses: Vec<ProviderStatus> = baseline_by_provider
            .iter()
            .map(|(provider, base)| {
                let empty = UsageRollup::default();
                let r = recent.get(provider).unwrap_or(&empty);
                let (status, reason) = provider_status(r, avg_latency(base));
                ProviderStatus {
                    provider: provider.clone(),
                    status,
                    response_time: avg_latency(r),
                    error_rate: error_rate(r),
                    calls: r.calls,
                    baseline_response_time: avg_latency(base),
                    reason,
                }
            })
            .collect();
        statuses.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.provider.cmp(&b.provider)));
        let points = series(&minutes, from, to, MICROS_PER_MINUTE)?;
        Ok(Realtime {
            timestamp: rfc3339(now),
            window_minutes: REALTIME_MINUTES,
            current: RealtimeCurrent {
                active_conversations: self.stores.usage.active_conversations(tenant, from).await?,
                messages_per_minute: round(all.calls as f64 / REALTIME_MINUTES as f64, 2),
                avg_response_time: avg_latency(&all),
                active_providers: recent
                    .iter()
                    .filter(|(_, r)| r.calls > 0)
                    .map(|(p, _)| p.clone())
                    .collect(),
                error_rate: error_rate(&all),
            },
            provider_status: statuses,
            per_minute: points
                .into_iter()
                .map(|p| MinutePoint {
                    minute: p.t,
                    calls: p.calls,
                    errors: p.errors,
                    avg_response_time: p.avg_response_time,
                })
                .collect(),
        })
    }
}
