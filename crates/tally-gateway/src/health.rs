//! Deployment health: a circuit breaker per deployment (consecutive failures open it for a
//! cool-down, then one trial call decides), the passive error rate and latency of real
//! traffic, and the last active check. Together they give seed 003's
//! healthy/degraded/down status, which the health endpoint and routing share.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tally_core::TenantId;

/// Outcomes kept per deployment for the passive figures.
const WINDOW: usize = 200;
/// Error rate at or above which a deployment is degraded.
const DEGRADED_ERROR_RATE: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Down,
    /// No traffic and no check yet.
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct Deployment {
    consecutive_failures: u32,
    /// Open until this instant (µs); a trial call is let through after it.
    open_until: Option<i64>,
    trial_in_flight: bool,
    outcomes: VecDeque<(bool, f64)>,
    last_check: Option<ActiveCheck>,
}

/// The last active check of a deployment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActiveCheck {
    pub ok: bool,
    pub latency_ms: f64,
    /// The provider's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Models the provider listed, when it answered with a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// A deployment's health as the endpoint shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeploymentHealth {
    pub status: HealthStatus,
    pub circuit_open: bool,
    /// Of the last calls (up to 200).
    pub calls: usize,
    pub error_rate: f64,
    pub avg_latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<ActiveCheck>,
}

type Key = (TenantId, String);

pub struct Health {
    failures_to_open: u32,
    cooldown_micros: i64,
    deployments: Mutex<HashMap<Key, Deployment>>,
}

impl Health {
    pub fn new(failures_to_open: u32, cooldown_micros: i64) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            cooldown_micros,
            deployments: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Deployment>> {
        self.deployments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go to the deployment now: its circuit is closed, or open past
    /// its cool-down with no trial in flight (this call becomes the trial).
    pub fn admit(&self, tenant: TenantId, name: &str, now: i64) -> bool {
        let mut map = self.lock();
        let Some(d) = map.get_mut(&(tenant, name.to_owned())) else {
            return true;
        };
        match d.open_until {
            None => true,
            Some(until) if now >= until && !d.trial_in_flight => {
                d.trial_in_flight = true;
                true
            }
            Some(_) => false,
        }
    }

    /// Records a call's outcome (a failure is the provider's: 429, 5xx, a timeout or a
    /// broken connection, not the client's 4xx).
    pub fn record(&self, tenant: TenantId, name: &str, ok: bool, latency_ms: f64, now: i64) {
        let mut map = self.lock();
        let d = map.entry((tenant, name.to_owned())).or_default();
        if d.outcomes.len() == WINDOW {
            d.outcomes.pop_front();
        }
        d.outcomes.push_back((ok, latency_ms));
        d.trial_in_flight = false;
        if ok {
            d.consecutive_failures = 0;
            d.open_until = None;
        } else {
            d.consecutive_failures += 1;
            if d.consecutive_failures >= self.failures_to_open || d.open_until.is_some() {
                d.open_until = Some(now + self.cooldown_micros);
            }
        }
    }

    /// Records an active check's result.
    pub fn record_check(&self, tenant: TenantId, name: &str, check: ActiveCheck) {
        self.lock()
            .entry((tenant, name.to_owned()))
            .or_default()
            .last_check = Some(check);
    }

    /// Forgets a deleted credential's state.
    pub fn forget(&self, tenant: TenantId, name: &str) {
        self.lock().remove(&(tenant, name.to_owned()));
    }

    pub fn of(&self, tenant: TenantId, name: &str, now: i64) -> DeploymentHealth {
        let map = self.lock();
        let Some(d) = map.get(&(tenant, name.to_owned())) else {
            return DeploymentHealth {
                status: HealthStatus::Unknown,
                circuit_open: false,
                calls: 0,
                error_rate: 0.0,
                avg_latency_ms: None,
                last_check: None,
            };
        };
        let calls = d.outcomes.len();
        let errors = d.outcomes.iter().filter(|(ok, _)| !ok).count();
        let error_rate = if calls == 0 {
            0.0
        } else {
            errors as f64 / calls as f64
        };
        let ok_latencies: Vec<f64> = d
            .outcomes
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, l)| *l)
            .collect();
        let avg_latency_ms = (!ok_latencies.is_empty())
            .then(|| ok_latencies.iter().sum::<f64>() / ok_latencies.len() as f64);
        let circuit_open = d.open_until.is_some_and(|u| now < u);
        let check_failed = d.last_check.as_ref().is_some_and(|c| !c.ok);
        let status = if circuit_open || (check_failed && calls == 0) {
            HealthStatus::Down
        } else if error_rate >= DEGRADED_ERROR_RATE || check_failed {
            HealthStatus::Degraded
        } else if calls == 0 && d.last_check.is_none() {
            HealthStatus::Unknown
        } else {
            HealthStatus::Healthy
        };
        DeploymentHealth {
            status,
            circuit_open,
            calls,
            error_rate: tally_core::activity::round_to(error_rate, 3),
            avg_latency_ms: avg_latency_ms.map(|l| tally_core::activity::round_to(l, 1)),
            last_check: d.last_check.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_open_the_circuit_and_a_trial_closes_it() {
        let h = Health::new(3, 1_000);
        let t = TenantId::generate();
        for _ in 0..3 {
            assert!(h.admit(t, "openai", 0));
            h.record(t, "openai", false, 10.0, 0);
        }
        assert!(!h.admit(t, "openai", 500), "open during the cool-down");
        assert_eq!(h.of(t, "openai", 500).status, HealthStatus::Down);
        assert!(h.admit(t, "openai", 1_000), "one trial after it");
        assert!(!h.admit(t, "openai", 1_000), "only one");
        h.record(t, "openai", true, 10.0, 1_000);
        assert!(h.admit(t, "openai", 1_001));
        assert_eq!(
            h.of(t, "openai", 1_001).status,
            HealthStatus::Degraded,
            "3 of 4 failed"
        );
        assert_eq!(h.of(t, "other", 0).status, HealthStatus::Unknown);
    }

    #[test]
    fn a_failed_trial_reopens_at_once() {
        let h = Health::new(2, 1_000);
        let t = TenantId::generate();
        h.record(t, "a", false, 1.0, 0);
        h.record(t, "a", false, 1.0, 0);
        assert!(h.admit(t, "a", 1_000));
        h.record(t, "a", false, 1.0, 1_000);
        assert!(!h.admit(t, "a", 1_500));
    }
}
