//! Activities (seed 001 "Activités Utilisateur"): listing filters, the stored event as read
//! back, tracked-user and project profiles, and the per-user summary computed from the
//! hourly user rollup.

use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, NaiveDate};
use serde::Serialize;
use uuid::Uuid;

use crate::event::EventType;
use crate::time;

/// Listing filters. Dates are UTC days, both ends inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityFilter {
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub event_type: Option<EventType>,
    pub date_from: Option<NaiveDate>,
    pub date_to: Option<NaiveDate>,
}

impl ActivityFilter {
    /// `[from, to)` in microseconds, from the inclusive day bounds.
    pub fn time_range(&self) -> (Option<i64>, Option<i64>) {
        (
            self.date_from
                .map(|d| time::day_of_date(d) * time::MICROS_PER_DAY),
            self.date_to
                .map(|d| (time::day_of_date(d) + 1) * time::MICROS_PER_DAY),
        )
    }
}

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
/// Deepest row reachable by offset pagination; beyond it, narrow the date range.
pub const MAX_OFFSET: u64 = 100_000;

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: i64,
    pub tracking_id: Uuid,
    pub event_type: EventType,
    pub event_name: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub timestamp: i64,
    pub received_at: i64,
    pub properties: String,
    pub context: String,
    pub enriched: String,
}

/// A person tracked by a tenant's product (not a tally account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserProfile {
    pub user_id: String,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub role: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Project {
    pub project_id: String,
    pub name: String,
    pub organization_name: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One row of the hourly user rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserHourCount {
    /// Hours since the epoch.
    pub hour: i64,
    pub project_id: Option<String>,
    pub event_type: EventType,
    pub event_name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserSummary {
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub total_activities: u64,
    pub activities_today: u64,
    pub activities_this_week: u64,
    pub most_active_day: Option<NaiveDate>,
    pub most_active_hour: Option<u32>,
    pub average_activities_per_day: f64,
    pub by_event_type: BTreeMap<&'static str, u64>,
    /// (project id, count), most active first.
    pub by_project: Vec<(String, u64)>,
    /// (event name, count), most frequent first.
    pub top_actions: Vec<(String, u64)>,
}

pub const TOP_ACTIONS: usize = 10;

/// Folds rollup rows into the summary. The period runs from `date_from` (or the first
/// active day) to `date_to` (or today); "this week" is the ISO week (Monday first) of today.
pub fn summarize_user(
    rows: &[UserHourCount],
    today: NaiveDate,
    date_from: Option<NaiveDate>,
    date_to: Option<NaiveDate>,
) -> UserSummary {
    let today_day = time::day_of_date(today);
    let week_start = today_day - i64::from(today.weekday().num_days_from_monday());
    let mut by_day: BTreeMap<i64, u64> = BTreeMap::new();
    let mut by_hour = [0u64; 24];
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_project: HashMap<&str, u64> = HashMap::new();
    let mut by_action: HashMap<&str, u64> = HashMap::new();
    let (mut total, mut today_n, mut week_n) = (0u64, 0u64, 0u64);

    for r in rows {
        let day = r.hour.div_euclid(24);
        total += r.count;
        *by_day.entry(day).or_default() += r.count;
        by_hour[r.hour.rem_euclid(24) as usize] += r.count;
        *by_type.entry(r.event_type.as_str()).or_default() += r.count;
        if let Some(p) = &r.project_id {
            *by_project.entry(p.as_str()).or_default() += r.count;
        }
        *by_action.entry(r.event_name.as_str()).or_default() += r.count;
        if day == today_day {
            today_n += r.count;
        }
        if day >= week_start && day <= today_day {
            week_n += r.count;
        }
    }

    let first_day = by_day.keys().next().copied();
    let start = date_from
        .or_else(|| first_day.map(time::date_of_day))
        .unwrap_or(today);
    let end = date_to.unwrap_or(today).max(start);
    let days = (end - start).num_days() + 1;
    // Highest count wins; among equals the earliest day / hour.
    let most_active_day = by_day
        .iter()
        .fold(None::<(i64, u64)>, |best, (&d, &n)| match best {
            Some((_, bn)) if bn >= n => best,
            _ => Some((d, n)),
        })
        .map(|(d, _)| time::date_of_day(d));
    let most_active_hour = (total > 0).then(|| {
        let mut best = 0usize;
        for h in 1..24 {
            if by_hour[h] > by_hour[best] {
                best = h;
            }
        }
        best as u32
    });

    UserSummary {
        start_date: start,
        end_date: end,
        total_activities: total,
        activities_today: today_n,
        activities_this_week: week_n,
        most_active_day,
        most_active_hour,
        average_activities_per_day: round_to(total as f64 / days as f64, 2),
        by_event_type: by_type,
        by_project: ranked(by_project, usize::MAX),
        top_actions: ranked(by_action, TOP_ACTIONS),
    }
}

fn ranked(counts: HashMap<&str, u64>, limit: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}

/// `x` rounded to `decimals` places, for display (never for money: see `pricing::Nanos`).
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (x * p).round() / p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        date: &str,
        hour: i64,
        project: Option<&str>,
        t: EventType,
        name: &str,
        n: u64,
    ) -> UserHourCount {
        let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        UserHourCount {
            hour: time::day_of_date(d) * 24 + hour,
            project_id: project.map(str::to_owned),
            event_type: t,
            event_name: name.into(),
            count: n,
        }
    }

    #[test]
    fn summary_from_known_rows() {
        use EventType::*;
        let rows = vec![
            row("2024-01-01", 9, Some("p1"), UserAction, "client_created", 5),
            row(
                "2024-01-15",
                14,
                Some("p1"),
                UserAction,
                "client_created",
                10,
            ),
            row(
                "2024-01-15",
                14,
                Some("p2"),
                PageView,
                "dashboard_viewed",
                6,
            ),
            row(
                "2024-01-18",
                10,
                Some("p2"),
                UserAction,
                "client_updated",
                3,
            ), // Thursday: this week
            row("2024-01-20", 16, None, ApiCall, "export", 2), // today (Saturday)
        ];
        let today = NaiveDate::from_ymd_opt(2024, 1, 20).unwrap();
        let s = summarize_user(&rows, today, None, None);
        assert_eq!(s.start_date.to_string(), "2024-01-01");
        assert_eq!(s.end_date, today);
        assert_eq!(s.total_activities, 26);
        assert_eq!(s.activities_today, 2);
        assert_eq!(s.activities_this_week, 21); // Mon 15th .. Sat 20th: 10+6+3+2
        assert_eq!(s.most_active_day.unwrap().to_string(), "2024-01-15");
        assert_eq!(s.most_active_hour, Some(14));
        assert_eq!(s.average_activities_per_day, 1.3); // 26 / 20 days
        assert_eq!(s.by_event_type["user_action"], 18);
        assert_eq!(s.by_event_type["page_view"], 6);
        assert_eq!(s.by_project, vec![("p1".into(), 15), ("p2".into(), 9)]);
        assert_eq!(s.top_actions[0], ("client_created".into(), 15));
        assert_eq!(s.top_actions.len(), 4);
    }

    #[test]
    fn empty_summary_is_zeroes_over_today() {
        let today = NaiveDate::from_ymd_opt(2024, 1, 20).unwrap();
        let s = summarize_user(&[], today, None, None);
        assert_eq!(
            (s.total_activities, s.most_active_day, s.most_active_hour),
            (0, None, None)
        );
        assert_eq!(s.average_activities_per_day, 0.0);
        assert_eq!(s.start_date, today);
    }

    #[test]
    fn filter_time_range_is_inclusive_of_whole_days() {
        let f = ActivityFilter {
            date_from: NaiveDate::from_ymd_opt(2024, 1, 20),
            date_to: NaiveDate::from_ymd_opt(2024, 1, 20),
            ..Default::default()
        };
        let (a, b) = f.time_range();
        assert_eq!(b.unwrap() - a.unwrap(), time::MICROS_PER_DAY);
        assert_eq!(time::rfc3339(a.unwrap()), "2024-01-20T00:00:00Z");
    }
}
