//! The audit trail, for owners and admins.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tally_core::audit::{AuditFilter, AuditRecord, Outcome};
use tally_core::auth::Action;
use tally_core::time::rfc3339;
use tally_core::{check_id, FieldError, TenantId};

use super::extract::{parse_u32, require};
use super::extract::{ApiQuery, Auth};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_ai::analytics::parse_instant;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Platform admins: one tenant's entries (default: every entry, platform-wide ones
    /// included). Others always see their own tenant's.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<String>,
    /// An action, e.g. `account.deleted`, `auth.login_failed`.
    #[param(pattern = r"^[a-z_]+\.[a-z_]+$", max_length = 64)]
    action: Option<String>,
    /// An actor, e.g. `account:<uuid>`, `api_key:<uuid>`, `cli`, `anonymous`.
    #[param(pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$", max_length = 128)]
    actor: Option<String>,
    #[param(value_type = Option<Outcome>)]
    outcome: Option<String>,
    /// Entries at or after this time (RFC 3339 or YYYY-MM-DD).
    #[param(schema_with = super::schemas::date_or_time)]
    from: Option<String>,
    /// Entries before this time.
    #[param(schema_with = super::schemas::date_or_time)]
    to: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[1-9][0-9]{0,17}$")]
    cursor: Option<String>,
    /// 1 to 500, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub tenant_id: Option<uuid::Uuid>,
    pub actor: String,
    pub actor_label: Option<String>,
    pub ip: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: Outcome,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub results: Vec<AuditEntry>,
    /// Pass as `cursor` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

fn entry(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        id: r.id,
        at: rfc3339(r.at),
        tenant_id: r.tenant_id.map(|t| t.0),
        actor: r.actor,
        actor_label: r.actor_label,
        ip: r.ip,
        action: r.action,
        target: r.target,
        outcome: r.outcome,
        details: r.details,
    }
}

/// The audit trail, newest first: logins and failed logins, and every change to tenants,
/// accounts, keys, quotas and prices, with who, when and from where. Secrets are never
/// recorded.
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    require(&p, Action::ManageTenant)?;
    let tenant_id = match q.tenant_id.as_deref() {
        Some(t) => {
            let t: TenantId = t
                .parse()
                .map_err(|_| FieldError::invalid("tenant_id", "must be a UUID"))?;
            Some(p.effective_tenant(Some(t)).map_err(|_| {
                ApiError::Forbidden("only the admin role may act on another tenant".into())
            })?)
        }
        None if p.is_platform_admin() => None,
        None => Some(p.tenant_id),
    };
    let outcome = q
        .outcome
        .as_deref()
        .map(|o| {
            Outcome::parse(o)
                .ok_or_else(|| FieldError::invalid("outcome", "must be success or failure"))
        })
        .transpose()?;
    let limit = parse_u32("limit", q.limit.as_deref(), 100, 1, 500)?;
    let before_id =
        q.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    FieldError::invalid("cursor", "must be a cursor from next_cursor")
                })
            })
            .transpose()?;
    if let Some(a) = &q.actor {
        check_id("actor", a, 128)?;
    }
    if let Some(a) = &q.action {
        let well_formed = a.len() <= 64
            && a.split_once('.').is_some_and(|(area, verb)| {
                let word = |w: &str| {
                    !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                };
                word(area) && word(verb)
            });
        if !well_formed {
            return Err(
                FieldError::invalid("action", "must be an action such as account.deleted").into(),
            );
        }
    }
    let filter = AuditFilter {
        tenant_id,
        action: q.action,
        actor: q.actor,
        outcome,
        from: q
            .from
            .as_deref()
            .map(|s| parse_instant("from", s))
            .transpose()?,
        to: q
            .to
            .as_deref()
            .map(|s| parse_instant("to", s))
            .transpose()?,
        before_id,
        limit: limit + 1,
    };
    let mut rows = state.access.list(filter).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(AuditPage {
        results: rows.into_iter().map(entry).collect(),
        next_cursor,
    }))
}
