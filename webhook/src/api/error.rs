//! The API's error: the standard answer (`tocsin_core::http::ApiError`,
//! `{"error":{"code","message"}}`) plus the conversions that let handlers
//! use `?`. It wraps the core type rather than adding `From` impls to it
//! because the orphan rule forbids `impl From<sqlx::Error> for ApiError`
//! outside `tocsin-core`, and that crate should not learn about this API.

use std::panic::Location;

use axum::response::{IntoResponse, Response};
use tocsin_core::http::ApiError;

/// An API handler's failure, answered in the standard body.
#[derive(Debug)]
pub struct Error(pub ApiError);

/// The result of an API handler or helper.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<sqlx::Error> for Error {
    /// A database error: logged with where it happened, answered 503
    /// `unavailable` (the client may retry); its detail stays in the log.
    #[track_caller]
    fn from(e: sqlx::Error) -> Self {
        let at = Location::caller();
        tracing::error!(error = %e, %at, "API request failed on the database");
        Self(ApiError::unavailable())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}
