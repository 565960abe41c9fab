//! Provider credentials (seed 003 ai_providers): created and replaced by name, sealed
//! before they reach the store, shown masked, tested with a real request through the
//! outbound policy, and re-sealed under a new master key by the operator.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_core::credential::{mask, ProviderKind, StoredCredential};
use tally_core::outbound::OutboundPolicy;
use tally_core::{FieldError, TenantId};
use tally_store::Stores;

use crate::error::{GatewayError, GatewayResult};
use crate::health::ActiveCheck;
use crate::providers::{openai::endpoint, upstream_error};
use crate::secrets::MasterKey;
use crate::{Deployment, Gateway};

/// Credentials a tenant may hold.
pub const MAX_CREDENTIALS: usize = 50;
const MAX_SECRET: usize = 4096;

/// A credential to create or replace.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// What calls route by: `openai`, `anthropic`, `google`, or a name of the tenant's
    /// own (`local-vllm`, addressed as `local-vllm/<model>`). 1–64 lower-case letters,
    /// digits and `-`/`_`.
    pub name: String,
    /// The wire format: `openai`, `anthropic`, `google` or `openai_compatible`. Defaults
    /// to the name's when the name is one of the first three.
    #[serde(default)]
    pub kind: Option<String>,
    /// The provider's API key. Stored sealed; never shown again.
    pub api_key: String,
    /// The provider's API root (e.g. `http://10.0.0.5:8000/v1`); required for
    /// `openai_compatible`, defaults to the public endpoint otherwise.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Models this deployment serves (beyond those its kind serves by name).
    #[serde(default)]
    pub models: Vec<String>,
    /// Share of traffic among deployments serving the same model, 1–1000 (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A credential as lists show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `sk-…abcd`.
    pub api_key_masked: String,
    pub models: Vec<String>,
    pub weight: u32,
    pub key_version: u32,
    pub created_at: String,
    pub updated_at: String,
}

impl From<StoredCredential> for CredentialView {
    fn from(c: StoredCredential) -> Self {
        let ts = |t: i64| tally_core::time::rfc3339(t);
        Self {
            base_url: c
                .base_url
                .clone()
                .or_else(|| c.kind.default_base_url().map(str::to_owned))
                .unwrap_or_default(),
            name: c.name,
            kind: c.kind,
            api_key_masked: c.masked,
            models: c.models,
            weight: c.weight,
            key_version: c.key_version,
            created_at: ts(c.created_at),
            updated_at: ts(c.updated_at),
        }
    }
}

pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn valid_model(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic() && c != '/')
}

/// The result of a connection test.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionTest {
    pub provider: String,
    pub ok: bool,
    /// The provider's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: f64,
    /// Models the provider lists, when it answered with a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Gateway {
    fn validate_credential(
        &self,
        input: &CredentialInput,
    ) -> Result<(ProviderKind, Option<String>), FieldError> {
        if !valid_name(&input.name) {
            return Err(FieldError::invalid(
                "name",
                "must be 1 to 64 lower-case letters, digits, '-' or '_'",
            ));
        }
        let kind = match input.kind.as_deref() {
            Some(k) => ProviderKind::parse(k).ok_or_else(|| {
                FieldError::invalid(
                    "kind",
                    format!(
                        "must be one of {}",
                        ProviderKind::ALL.map(ProviderKind::as_str).join(", ")
                    ),
                )
            })?,
            None => ProviderKind::parse(&input.name)
                .filter(|k| *k != ProviderKind::OpenaiCompatible)
                .ok_or_else(|| {
                    FieldError::invalid(
                        "kind",
                        "is required when the name is not openai, anthropic or google",
                    )
                })?,
        };
        if input.api_key.trim().is_empty()
            || input.api_key.len() > MAX_SECRET
            || input.api_key.chars().any(char::is_control)
        {
            return Err(FieldError::invalid(
                "api_key",
                format!("must be 1 to {MAX_SECRET} characters without control characters"),
            ));
        }
        let base_url = match (&input.base_url, kind) {
            (None, ProviderKind::OpenaiCompatible) => {
                return Err(FieldError::required("base_url"));
            }
            (None, _) => None,
            (Some(url), _) => {
                crate::net::check_url(&self.policy, url)
                    .map_err(|e| FieldError::invalid("base_url", e.to_string()))?;
                Some(url.trim_end_matches('/').to_owned())
            }
        };
        if input.models.len() > 100 {
            return Err(FieldError::invalid("models", "at most 100 models"));
        }
        if let Some(i) = input.models.iter().position(|m| !valid_model(m)) {
            return Err(FieldError::invalid(
                format!("models[{i}]"),
                "must be 1 to 128 printable characters without '/' or spaces",
            ));
        }
        if input.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
            return Err(FieldError::invalid("weight", "must be 1 to 1000"));
        }
        Ok((kind, base_url))
    }

    /// Creates or replaces the tenant's credential of that name; whether it was created.
    pub async fn put_credential(
        &self,
        tenant: TenantId,
        input: CredentialInput,
    ) -> GatewayResult<(CredentialView, bool)> {
        let (kind, base_url) = self.validate_credential(&input)?;
        let existing = self.stores.gateway.credentials(tenant).await?;
        let created = !existing.iter().any(|c| c.name == input.name);
        if created && existing.len() >= MAX_CREDENTIALS {
            return Err(GatewayError::new(
                400,
                "TOO_MANY_ITEMS",
                "invalid_request_error",
                format!("a tenant holds at most {MAX_CREDENTIALS} credentials"),
            ));
        }
        let now = self.clock.now_micros();
        let stored = self
            .stores
            .gateway
            .put_credential(
                tenant,
                StoredCredential {
                    id: 0,
                    sealed: self.key.seal(tenant, &input.name, &input.api_key),
                    key_version: self.key.version(),
                    masked: mask(&input.api_key),
                    name: input.name,
                    kind,
                    base_url,
                    models: input.models,
                    weight: input.weight.unwrap_or(1),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
        self.forget(tenant);
        Ok((stored.into(), created))
    }

    pub async fn credentials(&self, tenant: TenantId) -> GatewayResult<Vec<CredentialView>> {
        Ok(self
            .stores
            .gateway
            .credentials(tenant)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn delete_credential(&self, tenant: TenantId, name: &str) -> GatewayResult<()> {
        if !self
            .stores
            .gateway
            .delete_credential(tenant, name.to_owned())
            .await?
        {
            return Err(GatewayError::new(
                404,
                "NOT_FOUND",
                "invalid_request_error",
                format!("no credential named '{name}'"),
            ));
        }
        self.health.forget(tenant, name);
        self.forget(tenant);
        Ok(())
    }

    /// Tests a stored credential (by name) with a real authenticated request.
    pub async fn test_credential(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> GatewayResult<ConnectionTest> {
        let t = self.tenant(tenant).await?;
        let d = t
            .deployments
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                GatewayError::new(
                    404,
                    "NOT_FOUND",
                    "invalid_request_error",
                    format!("no credential named '{name}'"),
                )
                .with_param("provider")
            })?;
        let check = self.probe(d).await;
        self.health.record_check(tenant, name, check.clone());
        Ok(self.probe_result(d, check))
    }

    /// Tests a credential before it is stored.
    pub async fn test_unsaved(
        &self,
        tenant: TenantId,
        input: CredentialInput,
    ) -> GatewayResult<ConnectionTest> {
        let (kind, base_url) = self.validate_credential(&input)?;
        let t = self.tenant(tenant).await?;
        let d = self.deployment(
            &t.settings,
            input.name,
            kind,
            base_url,
            input.api_key,
            input.models,
            1,
        );
        let check = self.probe(&d).await;
        Ok(self.probe_result(&d, check))
    }

    fn probe_result(&self, d: &Deployment, check: ActiveCheck) -> ConnectionTest {
        ConnectionTest {
            provider: d.name.clone(),
            ok: check.ok,
            status: check.status,
            latency_ms: check.latency_ms,
            models: check.models,
            error: check.error,
        }
    }

    /// One authenticated model-list request to the deployment.
    pub(crate) async fn probe(&self, d: &Deployment) -> ActiveCheck {
        let at = tally_core::time::rfc3339(self.clock.now_micros());
        let url = match d.kind {
            ProviderKind::Google => format!("{}/models", d.base_url),
            _ => endpoint(&d.base_url, "models"),
        };
        if let Err(e) = crate::net::check_url(&self.policy, &url) {
            return ActiveCheck {
                ok: false,
                latency_ms: 0.0,
                status: None,
                models: None,
                error: Some(e.to_string()),
                at,
            };
        }
        let mut req = d.http.get(&url).timeout(
            d.timeouts
                .first_byte
                .min(std::time::Duration::from_secs(30)),
        );
        req = match d.kind {
            ProviderKind::Anthropic => req.header("x-api-key", &d.secret).header(
                "anthropic-version",
                crate::providers::anthropic::API_VERSION,
            ),
            ProviderKind::Google => req.header("x-goog-api-key", &d.secret),
            _ => req.bearer_auth(&d.secret),
        };
        let started = Instant::now();
        let result = req.send().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let latency_ms = tally_core::activity::round_to(latency_ms, 2);
        match result {
            Err(e) => ActiveCheck {
                ok: false,
                latency_ms,
                status: None,
                models: None,
                error: Some(describe_reqwest(&e)),
                at,
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap_or_default();
                if (200..300).contains(&status) {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let n = v
                        .get("data")
                        .or_else(|| v.get("models"))
                        .and_then(Value::as_array)
                        .map(Vec::len);
                    ActiveCheck {
                        ok: true,
                        latency_ms,
                        status: Some(status),
                        models: n,
                        error: None,
                        at,
                    }
                } else {
                    let e = upstream_error(status, &body);
                    ActiveCheck {
                        ok: false,
                        latency_ms,
                        status: Some(status),
                        models: None,
                        error: Some(e.message),
                        at,
                    }
                }
            }
        }
    }
}

/// A transport failure in a sentence, without the URL's secrets (none are in URLs).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Re-seals every tenant's credentials from `old` under `new` (the operator's master-key
/// rotation), in one transaction. Returns how many were re-sealed.
pub async fn rotate_master_key(
    stores: &Stores,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<usize, String> {
    let all = stores
        .gateway
        .all_credentials()
        .await
        .map_err(|e| e.to_string())?;
    let mut sealed = Vec::with_capacity(all.len());
    for (tenant, c) in &all {
        let secret = old
            .open(*tenant, &c.name, c.key_version, &c.sealed)
            .map_err(|e| format!("credential '{}' of tenant {}: {e}", c.name, tenant.0))?;
        sealed.push((
            *tenant,
            c.id,
            new.seal(*tenant, &c.name, &secret),
            new.version(),
        ));
    }
    let n = sealed.len();
    stores
        .gateway
        .reseal_credentials(sealed)
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

/// Whether `policy` lets the gateway call `url` (its form and literal address).
pub fn url_allowed(policy: &OutboundPolicy, url: &str) -> Result<(), String> {
    crate::net::check_url(policy, url)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
