//! Request bodies: reading them (413 past the limit) and checking them in
//! one pass that names every invalid field.
//!
//! A body is deserialized into a struct of `Field`s: each field is taken
//! as whatever JSON it holds and converted on its own, so a field of the
//! wrong type is recorded instead of aborting the whole body, and unknown
//! keys are caught by a `#[serde(flatten)]` map. The struct's check then
//! turns each `Field` into its value, adding a sentence per bad field to
//! `Errors`, and answers them all in one 400.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::Value;
use tocsin_core::http::ApiError;

/// The body as bytes, with over-size as 413 in the standard shape.
pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        } else {
            ApiError::bad_request(format!("unreadable body: {r}"))
        }
    })
}

/// The body as a JSON object deserialized into `T` (a struct of `Field`s,
/// which cannot fail on a field's content); `what` completes "the body must
/// be a JSON object".
pub fn json_object<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!("the body must be a JSON object{what}")));
    }
    T::deserialize(value).map_err(|e| ApiError::bad_request(format!("unreadable body: {e}")))
}

/// One field of a body, converted on its own.
#[derive(Debug, Default)]
pub enum Field<T> {
    /// The key is not there.
    #[default]
    Absent,
    /// The key is there with `null`.
    Null,
    Valid(T),
    /// The key holds JSON of another type.
    Invalid,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => Self::Null,
            v => serde_json::from_value(v).map_or(Self::Invalid, Self::Valid),
        })
    }
}

impl<T> Field<T> {
    /// Whether the key is there, even with `null`.
    pub fn is_present(&self) -> bool {
        !matches!(self, Self::Absent)
    }

    /// Whether the key holds something other than `null`.
    pub fn is_given(&self) -> bool {
        matches!(self, Self::Valid(_) | Self::Invalid)
    }

    /// The value (`None` when absent or null); a value of the wrong type
    /// is recorded as "`key`: `expected`".
    pub fn get(self, key: &str, expected: &str, errors: &mut Errors) -> Option<T> {
        match self {
            Self::Absent | Self::Null => None,
            Self::Valid(v) => Some(v),
            Self::Invalid => {
                errors.add(key, expected);
                None
            }
        }
    }

    /// As `get`, and required: absent or null is recorded as "`key`: required".
    pub fn required(self, key: &str, expected: &str, errors: &mut Errors) -> Option<T> {
        if !self.is_given() {
            errors.add(key, "required");
        }
        self.get(key, expected, errors)
    }
}

impl Field<String> {
    /// A string field: anything else is "must be a string".
    pub fn string(self, key: &str, errors: &mut Errors) -> Option<String> {
        self.get(key, "must be a string", errors)
    }
}

impl Field<i64> {
    /// An integer within `range`.
    pub fn int(self, key: &str, range: std::ops::RangeInclusive<i64>, errors: &mut Errors) -> Option<i64> {
        let problem = format!("must be an integer from {} to {}", range.start(), range.end());
        match self.get(key, &problem, errors) {
            Some(n) if !range.contains(&n) => {
                errors.add(key, &problem);
                None
            }
            n => n,
        }
    }
}

/// Every problem found in a request, each a sentence naming its field.
#[derive(Debug, Default)]
pub struct Errors(Vec<String>);

impl Errors {
    /// Records "`field`: `problem`".
    pub fn add(&mut self, field: &str, problem: &str) {
        self.0.push(format!("{field}: {problem}"));
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value` when nothing was recorded, else one 400 naming every problem
    /// ("invalid `what`: …; …").
    pub fn finish<T>(self, what: &str, value: impl FnOnce() -> T) -> Result<T, ApiError> {
        if self.0.is_empty() { Ok(value()) } else { Err(self.error(what)) }
    }

    /// The 400 naming every problem recorded ("invalid `what`: …; …").
    pub fn error(self, what: &str) -> ApiError {
        ApiError::bad_request(format!("invalid {what}: {}", self.0.join("; ")))
    }
}
