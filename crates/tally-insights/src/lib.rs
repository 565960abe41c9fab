//! Event tracking and activities (seed 001): validate and enrich events, store them
//! durably, and read activities, profiles and per-user summaries back. No HTTP here:
//! `tally-server` maps [`InsightsError`] to statuses and owns the wire shapes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::Value;
use tally_core::activity::{self, ActivityFilter, Project, StoredEvent, UserProfile, UserSummary};
use tally_core::enrich::Enricher;
use tally_core::error::codes;
use tally_core::event::{self, EventInput, EventLimits, NewEvent};
use tally_core::sensitive::{self, SensitiveFinding};
use tally_core::tenancy::Tenant;
use tally_core::time::{self, SharedClock};
use tally_core::{FieldError, TenantId};
use tally_store::{ActivityRef, DeletionReport, InsertOutcome, Stores};
use uuid::Uuid;

use tally_core::cache::TtlCache;
mod error;
pub mod sql;
pub use error::{InsightsError, InsightsResult};

/// Batches larger than this are validated on a blocking thread, keeping the async
/// runtime's threads responsive.
const INLINE_PREPARE_MAX: usize = 8;

pub struct Insights {
    stores: Stores,
    enricher: Arc<Enricher>,
    limits: Arc<EventLimits>,
    tenants: TtlCache<TenantId, Tenant>,
    clock: SharedClock,
}

/// The result of one event of a track call.
#[derive(Debug, Clone)]
pub enum TrackOutcome {
    Accepted(Accepted),
    Rejected(FieldError),
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: i64,
    pub tracking_id: Uuid,
    pub duplicate: bool,
    pub event: TrackedEvent,
}

/// What a track response echoes of a stored event.
#[derive(Debug, Clone)]
pub struct TrackedEvent {
    pub event_type: tally_core::event::EventType,
    pub event_name: String,
    pub timestamp: i64,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
}

impl TrackedEvent {
    fn of(e: &NewEvent) -> Self {
        Self {
            event_type: e.event_type,
            event_name: e.event_name.clone(),
            timestamp: e.timestamp,
            user_id: e.user_id.clone(),
            project_id: e.project_id.clone(),
        }
    }
}

/// What a dry run found for one event.
pub struct DryRunItem {
    pub error: Option<FieldError>,
    pub sensitive: Vec<SensitiveFinding>,
    pub storage_bytes: usize,
}

pub struct ActivityPage {
    pub count: u64,
    pub events: Vec<StoredEvent>,
    pub users: HashMap<String, UserProfile>,
    pub projects: HashMap<String, Project>,
}

pub struct ActivityDetail {
    pub event: StoredEvent,
    pub user: Option<UserProfile>,
    pub project: Option<Project>,
}

pub struct SummaryView {
    pub summary: UserSummary,
    pub project_names: HashMap<String, String>,
}

impl Insights {
    pub fn new(
        stores: Stores,
        enricher: Arc<Enricher>,
        limits: EventLimits,
        clock: SharedClock,
    ) -> Self {
        Self {
            clock,
            stores,
            enricher,
            limits: Arc::new(limits),
            tenants: TtlCache::new(Duration::from_secs(30), 10_000),
        }
    }

    /// A new batch's id (time-ordered) and the time it was processed.
    pub fn batch_stamp(&self) -> (Uuid, i64) {
        (Uuid::now_v7(), self.clock.now_micros())
    }

    pub fn limits(&self) -> &EventLimits {
        &self.limits
    }

    async fn tenant(&self, id: TenantId) -> InsightsResult<Tenant> {
        if let Some(t) = self.tenants.get(&id) {
            return Ok(t);
        }
        let t = self
            .stores
            .identity
            .get_tenant(id)
            .await?
            .ok_or(InsightsError::NotFound("tenant"))?;
        self.tenants.insert(id, t.clone());
        Ok(t)
    }

    /// Validates, enriches and durably stores events. `items` holds what was parsed of each
    /// event: a parse failure is reported for that item alone.
    pub async fn track(
        &self,
        tenant_id: TenantId,
        items: Vec<Result<EventInput, FieldError>>,
        peer: Option<IpAddr>,
    ) -> InsightsResult<Vec<TrackOutcome>> {
        let received_at = self.clock.now_micros();
        let items = items.into_iter().map(|i| (i, received_at)).collect();
        self.track_received(tenant_id, items, peer).await
    }

    /// `track` for events each received at a time of its own: the demo's history (and
    /// imports). Timestamps are checked against each event's receive time.
    pub async fn track_received(
        &self,
        tenant_id: TenantId,
        items: Vec<(Result<EventInput, FieldError>, i64)>,
        peer: Option<IpAddr>,
    ) -> InsightsResult<Vec<TrackOutcome>> {
        let tenant = self.tenant(tenant_id).await?;
        let prepared = if items.len() <= INLINE_PREPARE_MAX {
            prepare_all(&self.enricher, &self.limits, tenant_id, items, peer)
        } else {
            let (enricher, limits) = (self.enricher.clone(), self.limits.clone());
            tokio::task::spawn_blocking(move || {
                prepare_all(&enricher, &limits, tenant_id, items, peer)
            })
            .await
            .map_err(InsightsError::internal)?
        };

        let mut to_store = Vec::with_capacity(prepared.len());
        let mut tracked = Vec::with_capacity(prepared.len());
        for item in prepared {
            match item {
                Ok(e) => {
                    tracked.push(Ok(TrackedEvent::of(&e)));
                    to_store.push(e);
                }
                Err(e) => tracked.push(Err(e)),
            }
        }
        let mut stored = self
            .stores
            .events
            .insert_events(tenant_id, tenant.max_events, to_store)
            .await?
            .into_iter();
        let mut out = Vec::with_capacity(tracked.len());
        for item in tracked {
            out.push(match item {
                Err(e) => TrackOutcome::Rejected(e),
                Ok(event) => match stored.next() {
                    Some(InsertOutcome::Inserted { id, tracking_id }) => {
                        TrackOutcome::Accepted(Accepted {
                            id,
                            tracking_id,
                            duplicate: false,
                            event,
                        })
                    }
                    Some(InsertOutcome::Duplicate { id, tracking_id }) => {
                        TrackOutcome::Accepted(Accepted {
                            id,
                            tracking_id,
                            duplicate: true,
                            event,
                        })
                    }
                    Some(InsertOutcome::OverLimit { limit }) => {
                        TrackOutcome::Rejected(FieldError::new(
                            codes::STORAGE_LIMIT,
                            "event",
                            format!("tenant storage limit of {limit} events reached"),
                        ))
                    }
                    None => {
                        return Err(InsightsError::Internal(
                            "store returned fewer outcomes than events".into(),
                        ))
                    }
                },
            });
        }
        Ok(out)
    }

    /// Validates events exactly as `track` would, and reports sensitive data and storage
    /// cost, without storing anything.
    pub fn dry_run(
        &self,
        tenant_id: TenantId,
        items: Vec<Result<EventInput, FieldError>>,
    ) -> Vec<DryRunItem> {
        let received_at = self.clock.now_micros();
        items
            .into_iter()
            .map(|item| {
                let input = match item {
                    Ok(i) => i,
                    Err(e) => {
                        return DryRunItem {
                            error: Some(e),
                            sensitive: Vec::new(),
                            storage_bytes: 0,
                        }
                    }
                };
                // Scan what the client sent, before validation lifts fields out.
                let mut sensitive = Vec::new();
                if let Some(Value::Object(p)) = &input.properties {
                    sensitive.extend(sensitive::scan("properties", p));
                }
                if let Some(Value::Object(c)) = &input.context {
                    sensitive.extend(sensitive::scan("context", c));
                }
                match prepare(
                    &self.enricher,
                    &self.limits,
                    tenant_id,
                    input,
                    received_at,
                    None,
                ) {
                    Ok(e) => DryRunItem {
                        error: None,
                        sensitive,
                        storage_bytes: e.estimated_storage_bytes(),
                    },
                    Err(e) => DryRunItem {
                        error: Some(e),
                        sensitive,
                        storage_bytes: 0,
                    },
                }
            })
            .collect()
    }

    pub async fn list_activities(
        &self,
        tenant: TenantId,
        filter: &ActivityFilter,
        page: u32,
        page_size: u32,
    ) -> InsightsResult<ActivityPage> {
        let offset = u64::from(page.saturating_sub(1)) * u64::from(page_size);
        if offset > activity::MAX_OFFSET {
            return Err(FieldError::invalid(
                "page",
                format!(
                    "page * page_size may not exceed {}; narrow the date range instead",
                    activity::MAX_OFFSET
                ),
            )
            .into());
        }
        let (count, events) = self
            .stores
            .events
            .list_activities(tenant, filter, offset, page_size)
            .await?;
        let (users, projects) = self.profiles_for(tenant, &events).await?;
        Ok(ActivityPage {
            count,
            events,
            users,
            projects,
        })
    }

    async fn profiles_for(
        &self,
        tenant: TenantId,
        events: &[StoredEvent],
    ) -> InsightsResult<(HashMap<String, UserProfile>, HashMap<String, Project>)> {
        let mut user_ids: Vec<String> = events.iter().filter_map(|e| e.user_id.clone()).collect();
        user_ids.sort();
        user_ids.dedup();
        let mut project_ids: Vec<String> =
            events.iter().filter_map(|e| e.project_id.clone()).collect();
        project_ids.sort();
        project_ids.dedup();
        let (users, projects) = tokio::try_join!(
            self.stores.profiles.get_users(tenant, &user_ids),
            self.stores.profiles.get_projects(tenant, &project_ids)
        )?;
        Ok((users, projects))
    }

    pub async fn activity(&self, tenant: TenantId, raw_id: &str) -> InsightsResult<ActivityDetail> {
        let at = if let Ok(n) = raw_id.parse::<i64>() {
            ActivityRef::Id(n)
        } else if let Ok(u) = Uuid::parse_str(raw_id) {
            ActivityRef::Tracking(u)
        } else {
            return Err(InsightsError::NotFound("activity"));
        };
        let event = self
            .stores
            .events
            .get_activity(tenant, at)
            .await?
            .ok_or(InsightsError::NotFound("activity"))?;
        let (mut users, mut projects) = self
            .profiles_for(tenant, std::slice::from_ref(&event))
            .await?;
        Ok(ActivityDetail {
            user: event.user_id.as_ref().and_then(|u| users.remove(u)),
            project: event.project_id.as_ref().and_then(|p| projects.remove(p)),
            event,
        })
    }

    pub async fn user_summary(
        &self,
        tenant: TenantId,
        user_id: &str,
        date_from: Option<NaiveDate>,
        date_to: Option<NaiveDate>,
    ) -> InsightsResult<SummaryView> {
        let filter = ActivityFilter {
            date_from,
            date_to,
            ..Default::default()
        };
        let (from, to) = filter.time_range();
        let rows = self
            .stores
            .events
            .user_activity(
                tenant,
                user_id,
                from.map(time::hour_of),
                to.map(time::hour_of),
            )
            .await?;
        if rows.is_empty() {
            let known = self
                .stores
                .profiles
                .get_users(tenant, &[user_id.to_owned()])
                .await?
                .contains_key(user_id);
            let ever = date_from.is_some() || date_to.is_some();
            let any = ever
                && !self
                    .stores
                    .events
                    .user_activity(tenant, user_id, None, None)
                    .await?
                    .is_empty();
            if !known && !any {
                return Err(InsightsError::NotFound("user"));
            }
        }
        let today = time::to_datetime(self.clock.now_micros()).date_naive();
        let summary = activity::summarize_user(&rows, today, date_from, date_to);
        let ids: Vec<String> = summary.by_project.iter().map(|(p, _)| p.clone()).collect();
        let project_names = self
            .stores
            .profiles
            .get_projects(tenant, &ids)
            .await?
            .into_iter()
            .map(|(id, p)| (id, p.name))
            .collect();
        Ok(SummaryView {
            summary,
            project_names,
        })
    }

    /// Creates or updates a profile, stamped now (a stored profile keeps its creation
    /// time).
    pub async fn upsert_user(
        &self,
        tenant: TenantId,
        mut profile: UserProfile,
    ) -> InsightsResult<(UserProfile, bool)> {
        let now = self.clock.now_micros();
        (profile.created_at, profile.updated_at) = (now, now);
        Ok(self.stores.profiles.upsert_user(tenant, profile).await?)
    }

    /// Creates or updates a project, stamped now; one without an id gets a new one.
    pub async fn upsert_project(
        &self,
        tenant: TenantId,
        mut project: Project,
    ) -> InsightsResult<(Project, bool)> {
        if project.project_id.is_empty() {
            project.project_id = Uuid::new_v4().to_string();
        }
        let now = self.clock.now_micros();
        (project.created_at, project.updated_at) = (now, now);
        Ok(self.stores.profiles.upsert_project(tenant, project).await?)
    }

    /// The tenant's storage limit in events, if it has one.
    pub async fn storage_limit(&self, tenant: TenantId) -> InsightsResult<Option<u64>> {
        Ok(self.tenant(tenant).await?.max_events)
    }

    /// One page of the tenant's tracked users, by id, and how many there are.
    pub async fn list_users(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> InsightsResult<(u64, Vec<UserProfile>)> {
        Ok(self
            .stores
            .profiles
            .list_users(tenant, offset, limit)
            .await?)
    }

    /// One tracked user's profile.
    pub async fn user(&self, tenant: TenantId, user_id: &str) -> InsightsResult<UserProfile> {
        self.stores
            .profiles
            .get_users(tenant, &[user_id.to_owned()])
            .await?
            .remove(user_id)
            .ok_or(InsightsError::NotFound("user"))
    }

    /// One page of the tenant's projects, by id, and how many there are.
    pub async fn list_projects(
        &self,
        tenant: TenantId,
        offset: u64,
        limit: u32,
    ) -> InsightsResult<(u64, Vec<Project>)> {
        Ok(self
            .stores
            .profiles
            .list_projects(tenant, offset, limit)
            .await?)
    }

    /// One project.
    pub async fn project(&self, tenant: TenantId, project_id: &str) -> InsightsResult<Project> {
        self.stores
            .profiles
            .get_projects(tenant, &[project_id.to_owned()])
            .await?
            .remove(project_id)
            .ok_or(InsightsError::NotFound("project"))
    }

    /// Erases a tracked user (an erasure request) through the one deletion path: events,
    /// profile, LLM usage rows and totals keyed to the user; `NotFound` when there was
    /// nothing of theirs.
    pub async fn erase_user(
        &self,
        tenant: TenantId,
        user_id: &str,
    ) -> InsightsResult<DeletionReport> {
        let report = self
            .stores
            .deletion
            .erase_tracked_user(tenant, user_id)
            .await?;
        if !report.found {
            return Err(InsightsError::NotFound("user"));
        }
        Ok(report)
    }
}

fn prepare_all(
    enricher: &Enricher,
    limits: &EventLimits,
    tenant: TenantId,
    items: Vec<(Result<EventInput, FieldError>, i64)>,
    peer: Option<IpAddr>,
) -> Vec<Result<NewEvent, FieldError>> {
    items
        .into_iter()
        .map(|(item, received_at)| {
            item.and_then(|input| prepare(enricher, limits, tenant, input, received_at, peer))
        })
        .collect()
}

/// Validation, enrichment and serialization of one event: everything but storage.
pub fn prepare(
    enricher: &Enricher,
    limits: &EventLimits,
    tenant: TenantId,
    input: EventInput,
    received_at: i64,
    peer: Option<IpAddr>,
) -> Result<NewEvent, FieldError> {
    let mut valid = event::validate(input, limits, received_at)?;
    let enriched = enricher.enrich(tenant.0.as_bytes(), &mut valid, peer);
    let to_text = |v: &serde_json::Map<String, Value>| {
        serde_json::to_string(v).map_err(|e| FieldError::invalid("properties", e.to_string()))
    };
    let properties = to_text(&valid.properties)?;
    let context = to_text(&valid.context)?;
    event::check_payload_size(&properties, &context, limits)?;
    let dedup_ts = match (&valid.client_id, valid.timestamp_provided) {
        (Some(_), true) => valid.timestamp,
        _ => 0,
    };
    Ok(NewEvent {
        tracking_id: Uuid::now_v7(),
        client_id: valid.client_id,
        dedup_ts,
        event_type: valid.event_type,
        event_name: valid.event_name,
        user_id: valid.user_id,
        project_id: valid.project_id,
        timestamp: valid.timestamp,
        received_at,
        properties,
        context,
        enriched: to_text(&enriched)?,
    })
}
