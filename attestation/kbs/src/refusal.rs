//! Why a request is refused: an HTTP status, a machine-readable kind and a short detail. Every
//! refusal is logged once, where it is turned into a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use krun_attestation::rcar::ERROR_TYPE_PREFIX;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
}

impl Refusal {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            status,
            kind,
            detail: detail.into(),
        }
    }

    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    pub fn unauthorized(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, kind, detail)
    }

    pub fn forbidden(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, kind, detail)
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, detail)
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", detail)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("{ERROR_TYPE_PREFIX}{}", self.kind),
            "detail": self.detail,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Logs a store error (never with secret data) and hides its details from the client.
impl From<crate::db::DbError> for Refusal {
    fn from(e: crate::db::DbError) -> Self {
        tracing::error!(error = %crate::error_chain(&e), "database error");
        Refusal::internal("database error")
    }
}
