//! Request and response bodies of the HTTP API, shaped as the seeds show them, with their
//! OpenAPI schemas.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tally_core::event::EventType;
use uuid::Uuid;

/// Identifiers that are canonical integers are shown as JSON numbers (as in the seed,
/// `"user_id": 123`); anything else stays a string.
pub fn id_json(s: &str) -> Value {
    match s.parse::<i64>() {
        Ok(n) if n.to_string() == s => Value::from(n),
        _ => Value::from(s),
    }
}

/// One event as sent to `/insights/track/` (documentation schema; parsing is field by
/// field so errors can name the field).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Optional client event id: retries with the same id and timestamp are stored once.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub id: Option<String>,
    pub event_type: EventType,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub event_name: String,
    /// Free-form properties; `user_id`, `project_id` and `timestamp` are recognised here too.
    #[schema(value_type = Object)]
    pub properties: Option<Value>,
    /// RFC 3339, from 2000 to at most 5 minutes ahead of the receive time; defaults to
    /// the receive time.
    #[schema(format = DateTime)]
    pub timestamp: Option<String>,
    /// `ip_address`, `user_agent`, `page`, `referrer`, `session_id`, …
    #[schema(value_type = Object)]
    pub context: Option<Value>,
    /// String or integer.
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub user_id: Option<Value>,
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub project_id: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TrackResponse {
    /// Tracking id of the stored event.
    pub id: Uuid,
    /// Numeric activity id (also accepted by `/activities/{id}/`).
    pub activity_id: i64,
    pub event_type: EventType,
    pub event_name: String,
    pub tracked_at: String,
    pub processed: bool,
    /// True when this was a retry of an already stored event.
    pub duplicate: bool,
    #[schema(schema_with = crate::api::schemas::id_output_or_null)]
    pub user_id: Value,
    pub project_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 events (the instance's `max_batch_events`).
    #[schema(value_type = Vec<EventBody>, min_items = 1, max_items = 1000)]
    pub events: Vec<Box<RawValue>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub batch_id: Uuid,
    pub events_count: usize,
    pub processed_count: usize,
    pub failed_count: usize,
    pub duplicate_count: usize,
    pub processed_at: String,
    pub results: Vec<BatchItem>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    pub index: usize,
    /// `accepted` or `rejected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Serialize, Clone, utoipa::ToSchema)]
pub struct ItemError {
    pub code: String,
    pub message: String,
    pub field: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackTestRequest {
    /// The events to check, as `/insights/track/` would take them. Any JSON value is
    /// accepted here: each is reported valid or not, with the reason.
    #[schema(value_type = Vec<Value>, min_items = 1, max_items = 1000)]
    pub test_events: Vec<Box<RawValue>>,
    /// Must be true (or absent): this endpoint never stores.
    #[schema(schema_with = crate::api::schemas::true_or_null)]
    pub dry_run: Option<bool>,
    /// Accepted for compatibility; validation always runs.
    pub validate_schema: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TrackTestResponse {
    pub test_results: TestResults,
    pub validation_details: ValidationDetails,
    pub events: Vec<TestEventResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TestResults {
    pub events_processed: usize,
    pub validation_passed: bool,
    pub estimated_storage_impact_bytes: usize,
    pub processing_time_ms: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ValidationDetails {
    pub schema_valid: bool,
    pub required_fields_present: bool,
    pub data_types_correct: bool,
    pub no_sensitive_data: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TestEventResult {
    pub index: usize,
    pub valid: bool,
    pub error: Option<ItemError>,
    pub sensitive_data: Vec<tally_core::sensitive::SensitiveFinding>,
    pub estimated_storage_bytes: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserRef {
    #[schema(schema_with = crate::api::schemas::id_output)]
    pub id: Value,
    pub email: Option<String>,
    pub full_name: Option<String>,
    /// In the detail view only: null when the user has no profile or no role.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub role: Option<Option<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectRef {
    pub tracking_id: String,
    pub name: Option<String>,
    /// In the detail view only: null when the project is not described.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub organization_name: Option<Option<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Activity {
    pub id: i64,
    pub tracking_id: Uuid,
    pub event_type: EventType,
    pub event_name: String,
    pub user: Option<UserRef>,
    pub project: Option<ProjectRef>,
    #[schema(value_type = Object)]
    pub properties: Value,
    #[schema(value_type = Object)]
    pub context: Value,
    pub timestamp: String,
    /// When tally received it.
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub enriched_data: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActivityList {
    pub count: u64,
    pub page: u32,
    pub page_size: u32,
    pub total_pages: u64,
    pub results: Vec<Activity>,
    #[schema(value_type = Object)]
    pub filters_applied: serde_json::Map<String, Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SummaryPeriod {
    pub start_date: String,
    pub end_date: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SummaryCounts {
    pub total_activities: u64,
    pub activities_today: u64,
    pub activities_this_week: u64,
    pub most_active_day: Option<String>,
    pub most_active_hour: Option<u32>,
    pub average_activities_per_day: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectCount {
    pub project_id: String,
    pub project_name: Option<String>,
    pub activities_count: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionCount {
    pub action: String,
    pub count: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserSummaryResponse {
    #[schema(schema_with = crate::api::schemas::id_output)]
    pub user_id: Value,
    pub period: SummaryPeriod,
    pub summary: SummaryCounts,
    pub by_event_type: std::collections::BTreeMap<String, u64>,
    pub by_project: Vec<ProjectCount>,
    pub top_actions: Vec<ActionCount>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserProfileBody {
    /// Required on `POST /insights/users/`; on `PUT`, taken from the path (and equal to it
    /// when given).
    #[schema(schema_with = crate::api::schemas::id_input_or_null)]
    pub user_id: Option<Value>,
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\u0000-\u001F\u007F-\u009F]+@[^@\s.\u0000-\u001F\u007F-\u009F][^@\s\u0000-\u001F\u007F-\u009F]*\.[^@\s\u0000-\u001F\u007F-\u009F]*[^@\s.\u0000-\u001F\u007F-\u009F]$"
    )]
    pub email: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub full_name: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub role: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserProfileResponse {
    #[schema(schema_with = crate::api::schemas::id_output)]
    pub user_id: Value,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub role: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectBody {
    /// Client identifier of the project; generated (UUID) on `POST` when absent; on `PUT`,
    /// equal to the path's when given.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub project_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub organization_name: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectResponse {
    pub project_id: String,
    pub name: String,
    pub organization_name: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub count: u64,
    pub page: u32,
    pub page_size: u32,
    pub results: Vec<T>,
}

// ------------------------------------------------------------------ auth and admin

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(max_length = 1024)]
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub expires_at: String,
    pub tenant_id: Uuid,
    pub role: tally_core::auth::Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub tenant_id: Uuid,
    /// `account` or `api_key`.
    pub kind: &'static str,
    pub id: Uuid,
    pub role: Option<tally_core::auth::Role>,
    pub scopes: Option<Vec<tally_core::auth::Scope>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// Storage limit in events; absent for none.
    #[serde(default, deserialize_with = "tally_core::number::deserialize_opt_u64")]
    #[schema(minimum = 1, maximum = 9007199254740991_u64)]
    pub max_events: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantResponse {
    pub id: Uuid,
    pub name: String,
    pub max_events: Option<u64>,
    pub created_at: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    #[schema(
        max_length = 254,
        pattern = r"^[^@\s\u0000-\u001F\u007F-\u009F]+@[^@\s.\u0000-\u001F\u007F-\u009F][^@\s\u0000-\u001F\u007F-\u009F]*\.[^@\s\u0000-\u001F\u007F-\u009F]*[^@\s.\u0000-\u001F\u007F-\u009F]$"
    )]
    pub email: String,
    /// 10 characters to 1,024 bytes.
    #[schema(min_length = 10, max_length = 256)]
    pub password: String,
    pub role: tally_core::auth::Role,
    /// Platform admins may create accounts in any tenant; others only in their own.
    pub tenant_id: Option<Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountResponse {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: tally_core::auth::Role,
    pub created_at: String,
    /// Set while the account is disabled.
    pub disabled_at: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccountRequest {
    /// `true` disables the account (no login, tokens refused); `false` enables it again.
    pub disabled: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<tally_core::auth::Scope>,
    pub tenant_id: Option<Uuid>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyResponse {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    /// Visible start of the key, e.g. `tly_ab12cd34_`.
    pub prefix: String,
    pub scopes: Vec<tally_core::auth::Scope>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The full key: present only in the creation response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a deletion removed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletionResponse {
    /// What was deleted, e.g. `tenant:<uuid>` or `tracked_user:<id>`.
    pub deleted: String,
    /// Rows removed per table.
    pub deleted_rows: std::collections::BTreeMap<String, u64>,
}
