//! The API contract enforced on the wire: the query parameters each route takes are the
//! ones its OpenAPI operation declares, read once from the generated document, so the
//! published contract and the server cannot drift apart.
//!
//! Rules for every `/api/v1` route (documented in `docs/api.md`):
//! - a parameter the operation does not declare is a 400 `UNKNOWN_PARAMETER` naming it;
//! - a parameter given twice, or given with an empty value, is a 400 `VALIDATION_ERROR`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::OpenApi;

use crate::error::ApiError;

/// The query parameters of each operation, keyed by method and path template (without
/// trailing slash, as routes match after normalisation).
#[derive(Debug, Default)]
pub struct QueryContract {
    operations: HashMap<(Method, String), BTreeSet<String>>,
}

impl QueryContract {
    pub fn from_document(doc: &OpenApi) -> Self {
        let mut operations = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let template = normalise(path);
            let ops = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let names = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                operations.insert((method, template.clone()), names);
            }
        }
        QueryContract { operations }
    }

    /// The declared query parameters of an operation; `None` for a route the document
    /// does not describe.
    pub fn parameters(&self, method: &Method, template: &str) -> Option<&BTreeSet<String>> {
        self.operations.get(&(method.clone(), normalise(template)))
    }

    /// Checks a query string against an operation's declared parameters.
    pub fn check(&self, method: &Method, template: &str, query: &str) -> Result<(), ApiError> {
        let empty = BTreeSet::new();
        // HEAD is answered by the GET handler.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let allowed = self.parameters(method, template).unwrap_or(&empty);
        let mut seen = BTreeSet::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !allowed.contains(name.as_ref()) {
                let message = if allowed.is_empty() {
                    format!("unknown query parameter '{name}': this operation takes none")
                } else {
                    format!(
                        "unknown query parameter '{name}'; this operation takes: {}",
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(ApiError::BadRequest {
                    code: "UNKNOWN_PARAMETER",
                    message,
                    details: json!({ "field": name, "allowed": allowed }),
                });
            }
            if !seen.insert(name.to_string()) {
                return Err(invalid(&name, "is given more than once"));
            }
            if value.is_empty() {
                return Err(invalid(&name, "is given without a value"));
            }
        }
        Ok(())
    }
}

fn invalid(name: &str, what: &str) -> ApiError {
    ApiError::BadRequest {
        code: "VALIDATION_ERROR",
        message: format!("{name}: {what}"),
        details: json!({ "field": name }),
    }
}

fn normalise(path: &str) -> String {
    match path.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    }
}

/// Route-layer middleware: refuses a request whose query string breaks the contract.
pub async fn strict_query(
    State(contract): State<Arc<QueryContract>>,
    req: Request,
    next: Next,
) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    if let (Some(template), Some(query)) = (template, req.uri().query()) {
        if let Err(e) = contract.check(req.method(), &template, query) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> QueryContract {
        QueryContract::from_document(crate::api::openapi::document())
    }

    #[test]
    fn declared_parameters_pass_and_others_are_named() {
        let c = contract();
        assert!(c
            .check(
                &Method::GET,
                "/api/v1/ai/costs",
                "period=last_7d&tenant_id=x"
            )
            .is_ok());
        let err = c
            .check(&Method::GET, "/api/v1/ai/costs", "userid=100")
            .unwrap_err();
        assert!(err.to_string().contains("userid"), "{err}");
        assert!(c
            .check(
                &Method::GET,
                "/api/v1/ai/costs",
                "period=last_7d&period=last_24h"
            )
            .is_err());
        assert!(c
            .check(&Method::GET, "/api/v1/ai/costs", "period=")
            .is_err());
        // Trailing slashes of the seeds' paths are the same operation.
        assert!(c
            .check(&Method::GET, "/api/v1/insights/activities", "user_id=1")
            .is_ok());
        // A route the document does not describe takes no parameter.
        assert!(c.check(&Method::GET, "/nowhere", "a=1").is_err());
        assert!(c.check(&Method::GET, "/nowhere", "").is_ok());
    }
}
