//! The receiver URL's query parameters: the route's settings for the
//! broadcasts it starts (`?contact_list=oncall&from=%2B14155550100`).

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use tocsin_core::http::ApiError;

use crate::api::ApiState;
use tocsin_core::campaign::limits;
use tocsin_core::provider::Provider;

use crate::api::enqueue;

/// The campaign-name prefix unless `?campaign_prefix=` says otherwise.
const DEFAULT_PREFIX: &str = "alert-";

/// The receiver URL's query parameters: the route's configuration.
#[derive(Debug)]
pub struct Route {
    pub contact_list: Option<String>,
    pub from: Option<String>,
    pub provider: Option<Provider>,
    /// `?route=failover:vonage,twilio`: the accounts its broadcasts call through.
    pub route: Option<tocsin_core::route::Route>,
    pub language: Option<String>,
    pub voice: Option<String>,
    pub repeat: Option<i64>,
    pub max_attempts: Option<i64>,
    pub retry_delay_secs: Option<i64>,
    pub machine_detection: Option<bool>,
    pub campaign_prefix: String,
    pub cancel_on_resolve: bool,
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

pub fn parse_route(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    state: &ApiState,
) -> Result<Route, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(format!("unreadable query string: {e}")))?;
    let mut route = Route {
        contact_list: None,
        from: None,
        provider: None,
        route: None,
        language: None,
        voice: None,
        repeat: None,
        max_attempts: None,
        retry_delay_secs: None,
        machine_detection: None,
        campaign_prefix: DEFAULT_PREFIX.into(),
        cancel_on_resolve: false,
    };
    let mut errors = Vec::new();
    let int = |key: &str, v: &str, range: std::ops::RangeInclusive<i64>, errors: &mut Vec<String>| {
        let n = v.parse::<i64>().ok().filter(|n| range.contains(n));
        if n.is_none() {
            errors.push(format!("{key}: must be an integer from {} to {}", range.start(), range.end()));
        }
        n
    };
    for (key, value) in pairs {
        let v = value.trim();
        match key.as_str() {
            "contact_list" => route.contact_list = Some(v.to_owned()),
            "from" => {
                if tocsin_core::PhoneNumber::parse(v, None).is_err() {
                    errors.push("from: not a phone number in E.164 form (e.g. %2B14155550100)".into());
                }
                route.from = Some(v.to_owned());
            }
            "provider" => match enqueue::parse_provider(v, &state.providers) {
                Ok(p) => route.provider = Some(p),
                Err(e) => errors.push(format!("provider: {e}")),
            },
            "route" => match v.parse() {
                Ok(r) => route.route = Some(r),
                Err(e) => errors.push(format!("route: {e}")),
            },
            "language" => route.language = Some(v.to_owned()),
            "voice" => route.voice = Some(v.to_owned()),
            // The ranges are the campaign type's.
            "repeat" => route.repeat = int("repeat", v, limits::REPEAT, &mut errors),
            "max_attempts" => route.max_attempts = int("max_attempts", v, limits::MAX_ATTEMPTS, &mut errors),
            "retry_delay_secs" => {
                route.retry_delay_secs = int("retry_delay_secs", v, limits::RETRY_DELAY_SECS, &mut errors);
            }
            "machine_detection" => match parse_bool(v) {
                Some(b) => route.machine_detection = Some(b),
                None => errors.push("machine_detection: must be true or false".into()),
            },
            "cancel_on_resolve" => match parse_bool(v) {
                Some(b) => route.cancel_on_resolve = b,
                None => errors.push("cancel_on_resolve: must be true or false".into()),
            },
            "campaign_prefix" => {
                if v.len() > 60 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    errors.push("campaign_prefix: at most 60 letters, digits, '-', '_' or '.'".into());
                }
                route.campaign_prefix = v.to_owned();
            }
            other => errors.push(format!("{other}: unknown query parameter")),
        }
    }
    if errors.is_empty() {
        Ok(route)
    } else {
        Err(ApiError::bad_request(format!("invalid query parameters: {}", errors.join("; "))))
    }
}
