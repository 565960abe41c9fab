//! Seed 001 endpoints: tracking, activities, user summaries, tracked users and projects.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tally_core::activity::{self, ActivityFilter, Project, StoredEvent, UserProfile};
use tally_core::auth::Action;
use tally_core::error::codes;
use tally_core::event::{EventInput, EventType};
use tally_core::time::rfc3339;
use tally_core::{check_id, FieldError};

use super::batch::{self, Counted, Report};
use super::dto::DeletionResponse;
use super::dto::*;
use super::extract::{
    paging, parse_item, parse_u32, require, tenant_for, ApiQuery, Auth, ClientIp, JsonBody,
    PageQuery, TenantQuery,
};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use tally_access::audit::Entry;
use tally_core::audit::action;
use tally_insights::{ActivityDetail, TrackOutcome};

fn parse_event(raw: &str) -> Result<EventInput, FieldError> {
    parse_item(raw, "event")
}

/// 201 when an upsert created the record, 200 when it updated one.
fn upsert_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Track one event.
#[utoipa::path(post, path = "/api/v1/insights/track/", tag = "insights",
    request_body = EventBody,
    responses(
        (status = 201, body = TrackResponse, description = "stored"),
        (status = 200, body = TrackResponse, description = "a retry of a stored event (same id and timestamp)"),
        (status = 400, body = crate::error::ErrorEnvelope, description = "INSIGHTS_001 invalid type, INSIGHTS_002 missing required, VALIDATION_ERROR, INVALID_TIMESTAMP"),
        (status = 403, body = crate::error::ErrorEnvelope, description = "missing scope, or INSIGHTS_006 storage limit")),
    security(("bearer" = [])))]
pub async fn track(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(raw): JsonBody<Box<RawValue>>,
) -> ApiResult<(StatusCode, Json<TrackResponse>)> {
    require(&p, Action::Ingest)?;
    let input = parse_event(raw.get())?;
    let outcome = state
        .insights
        .track(p.tenant_id, vec![Ok(input)], ip)
        .await?;
    match outcome.into_iter().next() {
        Some(TrackOutcome::Accepted(a)) => {
            let status = if a.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((
                status,
                Json(TrackResponse {
                    id: a.tracking_id,
                    activity_id: a.id,
                    event_type: a.event.event_type,
                    event_name: a.event.event_name,
                    tracked_at: rfc3339(a.event.timestamp),
                    processed: true,
                    duplicate: a.duplicate,
                    user_id: a.event.user_id.as_deref().map_or(Value::Null, id_json),
                    project_id: a.event.project_id,
                }),
            ))
        }
        Some(TrackOutcome::Rejected(e)) if e.code == codes::STORAGE_LIMIT => {
            let limit = state.insights.storage_limit(p.tenant_id).await?;
            Err(ApiError::StorageLimit(limit.unwrap_or_default()))
        }
        Some(TrackOutcome::Rejected(e)) => Err(e.into()),
        None => Err(ApiError::Internal("no outcome for the event".into())),
    }
}

/// Track several events; each is reported on its own.
#[utoipa::path(post, path = "/api/v1/insights/track/batch/", tag = "insights",
    request_body = BatchRequest,
    responses(
        (status = 201, body = BatchResponse, description = "every event accepted"),
        (status = 207, body = BatchResponse, description = "some events rejected; see results"),
        (status = 400, body = crate::error::ErrorEnvelope, description = "BATCH_REJECTED (no event accepted; details.results), VALIDATION_ERROR"),
        (status = 413, body = crate::error::ErrorEnvelope, description = "BATCH_TOO_LARGE or PAYLOAD_TOO_LARGE")),
    security(("bearer" = [])))]
pub async fn track_batch(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchResponse>)> {
    require(&p, Action::Ingest)?;
    batch::check_len(
        "events",
        "event",
        body.events.len(),
        state.config.max_batch_events,
    )?;
    let items: Vec<_> = body
        .events
        .iter()
        .map(|raw| parse_event(raw.get()))
        .collect();
    let outcomes = state.insights.track(p.tenant_id, items, ip).await?;
    let report = Report::of(outcomes, |index, o| match o {
        TrackOutcome::Accepted(a) => Counted::Accepted {
            duplicate: a.duplicate,
            item: BatchItem {
                index,
                status: "accepted",
                id: Some(a.tracking_id),
                activity_id: Some(a.id),
                duplicate: Some(a.duplicate),
                error: None,
            },
        },
        TrackOutcome::Rejected(e) => Counted::Rejected(BatchItem {
            index,
            status: "rejected",
            id: None,
            activity_id: None,
            duplicate: None,
            error: Some(batch::item_error(&e)),
        }),
    });
    let (batch_id, processed_at) = state.insights.batch_stamp();
    let response = BatchResponse {
        batch_id,
        events_count: report.results.len(),
        processed_count: report.accepted,
        failed_count: report.rejected,
        duplicate_count: report.duplicates,
        processed_at: rfc3339(processed_at),
        results: report.results,
    };
    let status = batch::status(
        response.processed_count,
        response.failed_count,
        "event",
        &response,
    )?;
    Ok((status, Json(response)))
}

/// Validate events without storing them.
#[utoipa::path(post, path = "/api/v1/insights/track/test/", tag = "insights",
    request_body = TrackTestRequest,
    responses((status = 200, body = TrackTestResponse)),
    security(("bearer" = [])))]
pub async fn track_test(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(body): JsonBody<TrackTestRequest>,
) -> ApiResult<Json<TrackTestResponse>> {
    require(&p, Action::Ingest)?;
    if body.dry_run == Some(false) {
        return Err(FieldError::invalid(
            "dry_run",
            "this endpoint never stores events; send them to /api/v1/insights/track/ instead",
        )
        .into());
    }
    batch::check_len(
        "test_events",
        "event",
        body.test_events.len(),
        state.config.max_batch_events,
    )?;
    let started = Instant::now();
    let items: Vec<_> = body
        .test_events
        .iter()
        .map(|raw| parse_event(raw.get()))
        .collect();
    let checked = state.insights.dry_run(p.tenant_id, items);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;

    let (mut schema_valid, mut required, mut types) = (true, true, true);
    let mut no_sensitive = true;
    let mut storage = 0;
    let mut events = Vec::with_capacity(checked.len());
    for (index, item) in checked.into_iter().enumerate() {
        if let Some(e) = &item.error {
            match e.code {
                codes::MISSING_REQUIRED => required = false,
                codes::INVALID_EVENT_TYPE => schema_valid = false,
                _ if e.field == "event"
                    || !e.field.contains('.') && e.message.starts_with("unknown field") =>
                {
                    schema_valid = false
                }
                _ => types = false,
            }
        }
        no_sensitive &= item.sensitive.is_empty();
        storage += item.storage_bytes;
        events.push(TestEventResult {
            index,
            valid: item.error.is_none(),
            error: item.error.as_ref().map(batch::item_error),
            sensitive_data: item.sensitive,
            estimated_storage_bytes: item.storage_bytes,
        });
    }
    Ok(Json(TrackTestResponse {
        test_results: TestResults {
            events_processed: events.len(),
            validation_passed: events.iter().all(|e| e.valid),
            estimated_storage_impact_bytes: storage,
            processing_time_ms: (elapsed_ms * 1000.0).round() / 1000.0,
        },
        validation_details: ValidationDetails {
            schema_valid,
            required_fields_present: required,
            data_types_correct: types,
            no_sensitive_data: no_sensitive,
        },
        events,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 128)]
    user_id: Option<String>,
    #[param(pattern = r"^[^\u0000-\u001F\u007F]+$", max_length = 128)]
    project_id: Option<String>,
    /// One of the six event types.
    #[param(value_type = Option<tally_core::event::EventType>)]
    event_type: Option<String>,
    /// YYYY-MM-DD (UTC), inclusive.
    #[param(value_type = Option<chrono::NaiveDate>)]
    date_from: Option<String>,
    /// YYYY-MM-DD (UTC), inclusive; not before `date_from`.
    #[param(value_type = Option<chrono::NaiveDate>)]
    date_to: Option<String>,
    /// From 1 to 1,000 (at most 100,000 activities are paged through; narrow the filters
    /// to see older ones).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    page: Option<String>,
    /// 1 to 100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    page_size: Option<String>,
    /// Platform admins only: another tenant.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<String>,
}

fn parse_date(field: &str, v: Option<&str>) -> Result<Option<NaiveDate>, FieldError> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| FieldError::invalid(field, "must be a date in YYYY-MM-DD form"))
        })
        .transpose()
}

fn check_period(from: Option<NaiveDate>, to: Option<NaiveDate>) -> Result<(), FieldError> {
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(FieldError::new(
                codes::INVALID_PERIOD,
                "date_from",
                "date_from is after date_to",
            ));
        }
    }
    Ok(())
}

fn non_empty_id(field: &str, v: Option<&str>) -> Result<Option<String>, FieldError> {
    v.map(|s| check_id(field, s, 128).map(str::to_owned))
        .transpose()
}

fn json_object(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::Object(Map::new()))
}

fn activity_json(
    e: StoredEvent,
    user: Option<&UserProfile>,
    project: Option<&Project>,
    detail: bool,
) -> Activity {
    Activity {
        id: e.id,
        tracking_id: e.tracking_id,
        event_type: e.event_type,
        event_name: e.event_name,
        user: e.user_id.as_deref().map(|id| UserRef {
            id: id_json(id),
            email: user.and_then(|u| u.email.clone()),
            full_name: user.and_then(|u| u.full_name.clone()),
            role: if detail {
                Some(user.and_then(|u| u.role.clone()))
            } else {
                None
            },
        }),
        project: e.project_id.as_deref().map(|id| ProjectRef {
            tracking_id: id.to_owned(),
            name: project.map(|p| p.name.clone()),
            organization_name: if detail {
                Some(project.and_then(|p| p.organization_name.clone()))
            } else {
                None
            },
        }),
        properties: json_object(&e.properties),
        context: json_object(&e.context),
        timestamp: rfc3339(e.timestamp),
        created_at: rfc3339(e.received_at),
        processed: detail.then_some(true),
        enriched_data: detail.then(|| json_object(&e.enriched)),
    }
}

/// List activities, newest first.
#[utoipa::path(get, path = "/api/v1/insights/activities/", tag = "insights",
    params(ActivityQuery),
    responses((status = 200, body = ActivityList), (status = 400, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list_activities(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ActivityQuery>,
) -> ApiResult<Json<ActivityList>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let event_type = match q.event_type.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(EventType::parse(s).ok_or_else(|| {
            FieldError::new(
                codes::INVALID_EVENT_TYPE,
                "event_type",
                format!("invalid event type '{s}'"),
            )
        })?),
    };
    let filter = ActivityFilter {
        user_id: non_empty_id("user_id", q.user_id.as_deref())?,
        project_id: non_empty_id("project_id", q.project_id.as_deref())?,
        event_type,
        date_from: parse_date("date_from", q.date_from.as_deref())?,
        date_to: parse_date("date_to", q.date_to.as_deref())?,
    };
    check_period(filter.date_from, filter.date_to)?;
    let page = parse_u32("page", q.page.as_deref(), 1, 1, 1000)?;
    let page_size = parse_u32(
        "page_size",
        q.page_size.as_deref(),
        activity::DEFAULT_PAGE_SIZE,
        1,
        activity::MAX_PAGE_SIZE,
    )?;
    let result = state
        .insights
        .list_activities(tenant, &filter, page, page_size)
        .await?;

    let mut applied = Map::new();
    if let Some(u) = &filter.user_id {
        applied.insert("user_id".into(), id_json(u));
    }
    if let Some(p) = &filter.project_id {
        applied.insert("project_id".into(), Value::from(p.as_str()));
    }
    if let Some(t) = filter.event_type {
        applied.insert("event_type".into(), Value::from(t.as_str()));
    }
    if let Some(d) = filter.date_from {
        applied.insert("date_from".into(), Value::from(d.to_string()));
    }
    if let Some(d) = filter.date_to {
        applied.insert("date_to".into(), Value::from(d.to_string()));
    }
    let results = result
        .events
        .into_iter()
        .map(|e| {
            let user = e.user_id.as_ref().and_then(|u| result.users.get(u));
            let project = e.project_id.as_ref().and_then(|p| result.projects.get(p));
            activity_json(e, user, project, false)
        })
        .collect();
    Ok(Json(ActivityList {
        count: result.count,
        page,
        page_size,
        total_pages: result.count.div_ceil(u64::from(page_size)),
        results,
        filters_applied: applied,
    }))
}

/// One activity, by numeric id or tracking UUID, with user, project and enrichment.
#[utoipa::path(get, path = "/api/v1/insights/activities/{activity_id}/", tag = "insights",
    params(("activity_id" = String, Path, max_length = 256, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$", description = "numeric id or tracking UUID"), TenantQuery),
    responses((status = 200, body = Activity), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_activity(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(activity_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<Activity>> {
    check_id("activity_id", &activity_id, 256)?;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let ActivityDetail {
        event,
        user,
        project,
    } = state.insights.activity(tenant, &activity_id).await?;
    Ok(Json(activity_json(
        event,
        user.as_ref(),
        project.as_ref(),
        true,
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// YYYY-MM-DD; defaults to the user's first activity.
    #[param(value_type = Option<chrono::NaiveDate>)]
    date_from: Option<String>,
    /// YYYY-MM-DD; defaults to today; not before `date_from`.
    #[param(value_type = Option<chrono::NaiveDate>)]
    date_to: Option<String>,
    /// Platform admins only: another tenant.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<String>,
}

/// Activity summary of one tracked user.
#[utoipa::path(get, path = "/api/v1/insights/activities/users/{user_id}/summary/", tag = "insights",
    params(("user_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), SummaryQuery),
    responses((status = 200, body = UserSummaryResponse), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn user_summary(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user_id): Path<String>,
    ApiQuery(q): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<UserSummaryResponse>> {
    check_id("user_id", &user_id, 128)?;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let from = parse_date("date_from", q.date_from.as_deref())?;
    let to = parse_date("date_to", q.date_to.as_deref())?;
    check_period(from, to)?;
    let view = state
        .insights
        .user_summary(tenant, &user_id, from, to)
        .await?;
    let s = view.summary;
    Ok(Json(UserSummaryResponse {
        user_id: id_json(&user_id),
        period: SummaryPeriod {
            start_date: s.start_date.to_string(),
            end_date: s.end_date.to_string(),
        },
        summary: SummaryCounts {
            total_activities: s.total_activities,
            activities_today: s.activities_today,
            activities_this_week: s.activities_this_week,
            most_active_day: s.most_active_day.map(|d| d.to_string()),
            most_active_hour: s.most_active_hour,
            average_activities_per_day: s.average_activities_per_day,
        },
        by_event_type: s
            .by_event_type
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        by_project: s
            .by_project
            .into_iter()
            .map(|(id, n)| ProjectCount {
                project_name: view.project_names.get(&id).cloned(),
                project_id: id,
                activities_count: n,
            })
            .collect(),
        top_actions: s
            .top_actions
            .into_iter()
            .map(|(action, count)| ActionCount { action, count })
            .collect(),
    }))
}

// ------------------------------------------------------------------ tracked users

fn user_response(u: UserProfile) -> UserProfileResponse {
    UserProfileResponse {
        user_id: id_json(&u.user_id),
        email: u.email,
        full_name: u.full_name,
        role: u.role,
        created_at: rfc3339(u.created_at),
        updated_at: rfc3339(u.updated_at),
    }
}

fn optional_text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, FieldError> {
    match v {
        None => Ok(None),
        Some(s) => {
            let t = s.trim();
            if t.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
                return Err(FieldError::invalid(
                    field,
                    format!("must be 1 to {max} printable characters"),
                ));
            }
            Ok(Some(t.to_owned()))
        }
    }
}

fn profile_from(user_id: String, body: UserProfileBody) -> Result<UserProfile, FieldError> {
    let email = optional_text("email", body.email, 254)?;
    if let Some(e) = &email {
        if !tally_core::tenancy::valid_email(e) {
            return Err(FieldError::invalid(
                "email",
                "must be a valid e-mail address",
            ));
        }
    }
    Ok(UserProfile {
        user_id,
        email,
        full_name: optional_text("full_name", body.full_name, 200)?,
        role: optional_text("role", body.role, 64)?,
        // Stamped by the service.
        created_at: 0,
        updated_at: 0,
    })
}

fn user_id_from(v: Option<Value>) -> Result<String, FieldError> {
    match v {
        Some(Value::String(s)) => check_id("user_id", &s, 128).map(|_| s.clone()),
        Some(Value::Number(n)) if tally_core::number::integer(&n).is_some() => {
            Ok(tally_core::number::id_text(&n).unwrap_or_default())
        }
        None | Some(Value::Null) => Err(FieldError::new(
            codes::MISSING_REQUIRED,
            "user_id",
            "user_id is required",
        )),
        Some(_) => Err(FieldError::invalid(
            "user_id",
            "must be a non-empty string (≤ 128) or an integer",
        )),
    }
}

/// Identify a tracked user: create or update their profile.
#[utoipa::path(post, path = "/api/v1/insights/users/", tag = "insights", request_body = UserProfileBody,
    responses((status = 201, body = UserProfileResponse, description = "created"), (status = 200, body = UserProfileResponse, description = "updated")),
    security(("bearer" = [])))]
pub async fn identify(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(mut body): JsonBody<UserProfileBody>,
) -> ApiResult<(StatusCode, Json<UserProfileResponse>)> {
    require(&p, Action::Ingest)?;
    let user_id = user_id_from(body.user_id.take())?;
    let (stored, created) = state
        .insights
        .upsert_user(p.tenant_id, profile_from(user_id, body)?)
        .await?;
    Ok((upsert_status(created), Json(user_response(stored))))
}

/// Create or update a tracked user's profile.
#[utoipa::path(put, path = "/api/v1/insights/users/{user_id}/", tag = "insights", request_body = UserProfileBody,
    params(("user_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")),
    responses((status = 201, body = UserProfileResponse), (status = 200, body = UserProfileResponse)),
    security(("bearer" = [])))]
pub async fn put_user(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user_id): Path<String>,
    JsonBody(mut body): JsonBody<UserProfileBody>,
) -> ApiResult<(StatusCode, Json<UserProfileResponse>)> {
    check_id("user_id", &user_id, 128)?;
    require(&p, Action::Ingest)?;
    let path_id = user_id_from(Some(Value::String(user_id)))?;
    if let Some(v) = body.user_id.take() {
        if user_id_from(Some(v))? != path_id {
            return Err(
                FieldError::invalid("user_id", "does not match the user id in the path").into(),
            );
        }
    }
    let (stored, created) = state
        .insights
        .upsert_user(p.tenant_id, profile_from(path_id, body)?)
        .await?;
    Ok((upsert_status(created), Json(user_response(stored))))
}

/// List tracked users.
#[utoipa::path(get, path = "/api/v1/insights/users/", tag = "insights", params(PageQuery),
    responses((status = 200, body = Paged<UserProfileResponse>)), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Paged<UserProfileResponse>>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let (page, page_size, offset) = paging(&q)?;
    let (count, users) = state.insights.list_users(tenant, offset, page_size).await?;
    Ok(Json(Paged {
        count,
        page,
        page_size,
        results: users.into_iter().map(user_response).collect(),
    }))
}

/// One tracked user's profile.
#[utoipa::path(get, path = "/api/v1/insights/users/{user_id}/", tag = "insights",
    params(("user_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), TenantQuery),
    responses((status = 200, body = UserProfileResponse), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(user_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<UserProfileResponse>> {
    check_id("user_id", &user_id, 128)?;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    Ok(Json(user_response(
        state.insights.user(tenant, &user_id).await?,
    )))
}

/// Erase a tracked user (an erasure request): their events, profile, LLM usage records,
/// per-user usage totals, conversations and user-scoped quotas. Totals without the user's
/// id (activity counts by day, spend by model) keep the spend but lose the erased events
/// from activity counts.
#[utoipa::path(delete, path = "/api/v1/insights/users/{user_id}/", tag = "insights",
    params(("user_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), TenantQuery),
    responses((status = 200, body = DeletionResponse), (status = 403, body = crate::error::ErrorEnvelope),
              (status = 404, body = crate::error::ErrorEnvelope, description = "no data for this user")),
    security(("bearer" = [])))]
pub async fn erase_user(
    State(state): State<AppState>,
    Auth(p): Auth,
    ClientIp(ip): ClientIp,
    Path(user_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<DeletionResponse>> {
    check_id("user_id", &user_id, 128)?;
    require(&p, Action::ManageTenant)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let report = state.insights.erase_user(tenant, &user_id).await?;
    // Its user-scoped quotas went with it.
    state.quotas.forget(tenant);
    let entry = Entry::success(
        Some(tenant),
        action::USER_ERASED,
        Some(format!("tracked_user:{user_id}")),
    )
    .details(serde_json::json!({ "deleted_rows": report.rows }));
    state.access.record_by(&p, ip, entry).await;
    Ok(Json(DeletionResponse {
        deleted: format!("tracked_user:{user_id}"),
        deleted_rows: report.rows,
    }))
}

// ------------------------------------------------------------------ projects

fn project_response(p: Project) -> ProjectResponse {
    ProjectResponse {
        project_id: p.project_id,
        name: p.name,
        organization_name: p.organization_name,
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

fn project_from(project_id: String, body: ProjectBody) -> Result<Project, FieldError> {
    let name = optional_text("name", Some(body.name), 200)?.unwrap_or_default();
    Ok(Project {
        project_id,
        name,
        organization_name: optional_text("organization_name", body.organization_name, 200)?,
        // Stamped by the service.
        created_at: 0,
        updated_at: 0,
    })
}

fn project_id_ok(s: String) -> Result<String, FieldError> {
    non_empty_id("project_id", Some(&s))?
        .ok_or_else(|| FieldError::invalid("project_id", "must not be empty"))
}

/// Create (or update) a project.
#[utoipa::path(post, path = "/api/v1/insights/projects/", tag = "insights", request_body = ProjectBody,
    responses((status = 201, body = ProjectResponse), (status = 200, body = ProjectResponse)), security(("bearer" = [])))]
pub async fn create_project(
    State(state): State<AppState>,
    Auth(p): Auth,
    JsonBody(mut body): JsonBody<ProjectBody>,
) -> ApiResult<(StatusCode, Json<ProjectResponse>)> {
    require(&p, Action::Ingest)?;
    let id = match body.project_id.take() {
        Some(id) => project_id_ok(id)?,
        // The service names it.
        None => String::new(),
    };
    let (stored, created) = state
        .insights
        .upsert_project(p.tenant_id, project_from(id, body)?)
        .await?;
    Ok((upsert_status(created), Json(project_response(stored))))
}

/// Create or update a project by id.
#[utoipa::path(put, path = "/api/v1/insights/projects/{project_id}/", tag = "insights", request_body = ProjectBody,
    params(("project_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")),
    responses((status = 201, body = ProjectResponse), (status = 200, body = ProjectResponse)), security(("bearer" = [])))]
pub async fn put_project(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(project_id): Path<String>,
    JsonBody(mut body): JsonBody<ProjectBody>,
) -> ApiResult<(StatusCode, Json<ProjectResponse>)> {
    check_id("project_id", &project_id, 128)?;
    require(&p, Action::Ingest)?;
    let id = project_id_ok(project_id)?;
    if let Some(b) = body.project_id.take() {
        if b != id {
            return Err(FieldError::invalid(
                "project_id",
                "does not match the project id in the path",
            )
            .into());
        }
    }
    let (stored, created) = state
        .insights
        .upsert_project(p.tenant_id, project_from(id, body)?)
        .await?;
    Ok((upsert_status(created), Json(project_response(stored))))
}

/// List projects.
#[utoipa::path(get, path = "/api/v1/insights/projects/", tag = "insights", params(PageQuery),
    responses((status = 200, body = Paged<ProjectResponse>)), security(("bearer" = [])))]
pub async fn list_projects(
    State(state): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Paged<ProjectResponse>>> {
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    let (page, page_size, offset) = paging(&q)?;
    let (count, projects) = state
        .insights
        .list_projects(tenant, offset, page_size)
        .await?;
    Ok(Json(Paged {
        count,
        page,
        page_size,
        results: projects.into_iter().map(project_response).collect(),
    }))
}

/// One project.
#[utoipa::path(get, path = "/api/v1/insights/projects/{project_id}/", tag = "insights",
    params(("project_id" = String, Path, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), TenantQuery),
    responses((status = 200, body = ProjectResponse), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn get_project(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(project_id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> ApiResult<Json<ProjectResponse>> {
    check_id("project_id", &project_id, 128)?;
    require(&p, Action::Read)?;
    let tenant = tenant_for(&p, q.tenant_id.as_deref())?;
    Ok(Json(project_response(
        state.insights.project(tenant, &project_id).await?,
    )))
}
