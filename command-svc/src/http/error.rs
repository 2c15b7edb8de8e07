//! One error type for the API, rendered as `application/problem+json` with a stable `code`.
//! Internal failures are logged once here, with their cause chain, and answered without detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::MarketError;
use domain::errors::ErrorKind;
use serde::Serialize;

use crate::auth::AuthError;
use crate::uow::ExecError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u32>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into(), retry_after_secs: None }
    }

    pub fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn forbidden_role(role: &str) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "auth.role_forbidden", format!("the {role} role may not do this"))
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "request.not_found", "no such resource")
    }

    fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error");
        let problem = Problem {
            kind: format!("urn:dscm:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<MarketError> for ApiError {
    fn from(e: MarketError) -> Self {
        let status = match e.kind() {
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Conflict => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Domain(d) => d.into(),
            ExecError::Contention { .. } => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::CONFLICT, "command.contention", e.to_string())
            },
            ExecError::InFlight => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::CONFLICT, "idempotency.in_flight", e.to_string())
            },
            ExecError::KeyReused => ApiError::invalid("idempotency.key_reused", e.to_string()),
            ExecError::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("database pool timed out");
                ApiError {
                    retry_after_secs: Some(1),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is busy; retry")
                }
            }
            other => {
                tracing::error!(error = %other, cause = ?std::error::Error::source(&other), "command failed");
                ApiError::internal()
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid => {
                ApiError::new(StatusCode::UNAUTHORIZED, "auth.unauthenticated", e.to_string())
            }
            AuthError::Database(cause) => {
                tracing::error!(error = %cause, "authentication failed");
                ApiError::internal()
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(cause: sqlx::Error) -> Self {
        tracing::error!(error = %cause, "database error");
        ApiError::internal()
    }
}
