//! How a batch answers, for every batch endpoint (events, usage records; predictions and
//! gateway batches later): each item reported at its index, the counts, and the status —
//! 201 when every item was accepted, 207 when some were rejected, 400 `BATCH_REJECTED`
//! (with the whole report in `details`) when none was.

use axum::http::StatusCode;
use serde::Serialize;
use tally_core::FieldError;

use super::dto::ItemError;
use crate::error::{ApiError, ApiResult};

/// Refuses an empty batch, or one over the limit, naming the field.
pub fn check_len(field: &str, items: &str, n: usize, max: usize) -> ApiResult<()> {
    if n == 0 {
        return Err(
            FieldError::invalid(field, format!("must contain at least one {items}")).into(),
        );
    }
    if n > max {
        return Err(ApiError::TooManyItems(format!(
            "{field} holds {n} {items}s; the limit is {max} per request"
        )));
    }
    Ok(())
}

/// One item's outcome as the report counts it.
pub enum Counted<T> {
    Accepted { duplicate: bool, item: T },
    Rejected(T),
}

/// Per-item results and counts of one batch.
pub struct Report<T> {
    pub results: Vec<T>,
    pub accepted: usize,
    pub rejected: usize,
    pub duplicates: usize,
}

impl<T> Report<T> {
    /// Reports `outcomes` in order; `shape` turns each (with its index) into the item
    /// shown.
    pub fn of<O>(outcomes: Vec<O>, mut shape: impl FnMut(usize, O) -> Counted<T>) -> Self {
        let mut report = Report {
            results: Vec::with_capacity(outcomes.len()),
            accepted: 0,
            rejected: 0,
            duplicates: 0,
        };
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let item = match shape(index, outcome) {
                Counted::Accepted { duplicate, item } => {
                    report.accepted += 1;
                    report.duplicates += usize::from(duplicate);
                    item
                }
                Counted::Rejected(item) => {
                    report.rejected += 1;
                    item
                }
            };
            report.results.push(item);
        }
        report
    }
}

/// The status of a batch's answer: 201 when every item was accepted, 207 when some were
/// rejected, 400 `BATCH_REJECTED` (with `response`, the whole report, in `details`) when
/// none was; `items` names them ("event", "record").
pub fn status(
    accepted: usize,
    rejected: usize,
    items: &str,
    response: &impl Serialize,
) -> ApiResult<StatusCode> {
    if accepted == 0 {
        return Err(ApiError::BadRequest {
            code: "BATCH_REJECTED",
            message: format!("no {items} of the batch was accepted; see details.results"),
            details: serde_json::to_value(response).map_err(ApiError::internal)?,
        });
    }
    Ok(if rejected == 0 {
        StatusCode::CREATED
    } else {
        StatusCode::MULTI_STATUS
    })
}

/// A rejected item's error as batches show it.
pub fn item_error(e: &FieldError) -> ItemError {
    ItemError {
        code: e.code.to_owned(),
        message: e.message.clone(),
        field: e.field.clone(),
    }
}
