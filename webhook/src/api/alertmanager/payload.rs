//! The Alertmanager webhook payload (version 4), as sent and as checked:
//! `Body` takes the JSON leniently, `Body::check` names every invalid field
//! in one 400 and yields a `Notification`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use tocsin_core::http::ApiError;

use crate::api::body::{self, Errors, Field};
use crate::api::enqueue;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }

    fn parse(v: Option<&str>) -> Option<Self> {
        match v {
            Some("firing") => Some(Self::Firing),
            Some("resolved") => Some(Self::Resolved),
            _ => None,
        }
    }
}

/// One alert of a notification.
#[derive(Debug)]
pub struct Alert {
    pub status: Status,
    pub annotations: Labels,
    pub starts_at: DateTime<Utc>,
    pub fingerprint: String,
}

impl Alert {
    /// The alert's identity within one firing: a re-fired alert keeps its
    /// fingerprint (its labels) but starts at a new time.
    pub fn instance(&self) -> String {
        format!("{}@{}", self.fingerprint, self.starts_at.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }
}

/// A checked Alertmanager notification (webhook payload version 4).
#[derive(Debug)]
pub struct Notification {
    pub group_key: String,
    pub status: Status,
    pub receiver: String,
    pub group_labels: Labels,
    pub common_labels: Labels,
    pub common_annotations: Labels,
    pub alerts: Vec<Alert>,
}

impl Notification {
    /// The alerts that are firing; a firing group with none (which
    /// Alertmanager does not send) counts all of them.
    pub fn firing(&self) -> Vec<&Alert> {
        let firing: Vec<&Alert> = self.alerts.iter().filter(|a| a.status == Status::Firing).collect();
        if firing.is_empty() { self.alerts.iter().collect() } else { firing }
    }

    pub fn alertname(&self) -> Option<&str> {
        self.group_labels.get("alertname").or_else(|| self.common_labels.get("alertname")).map(String::as_str)
    }
}

/// The notification as sent; keys Tocsin does not read (`externalURL`,
/// `truncatedAlerts`, …) are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Body {
    version: Field<String>,
    group_key: Field<String>,
    status: Field<String>,
    receiver: Field<String>,
    group_labels: Field<Map<String, Value>>,
    common_labels: Field<Map<String, Value>>,
    common_annotations: Field<Map<String, Value>>,
    alerts: Field<Vec<Value>>,
}

/// One alert as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AlertBody {
    status: Field<String>,
    labels: Field<Map<String, Value>>,
    annotations: Field<Map<String, Value>>,
    starts_at: Field<String>,
    fingerprint: Field<String>,
}

/// The most a notification's strings may hold, in bytes: Alertmanager's own
/// are far shorter, and a group key is an index key in PostgreSQL (whose
/// B-tree entries stop near 2.7 KB).
const MAX_KEY_BYTES: usize = 2048;
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Whether a string can be stored: no NUL (PostgreSQL refuses it in text)
/// and at most `max` bytes; otherwise the error, naming `field`.
fn storable(field: &str, s: &str, max: usize, errors: &mut Errors) -> bool {
    if s.contains('\0') {
        errors.add(field, "must not contain a NUL character");
        false
    } else if s.len() > max {
        errors.add(field, &format!("must be at most {max} bytes (it is {})", s.len()));
        false
    } else {
        true
    }
}

/// A map of strings (labels, annotations); `key` names it in errors.
fn labels(field: Field<Map<String, Value>>, key: &str, errors: &mut Errors) -> Labels {
    let mut out = Labels::new();
    for (k, v) in field.get(key, "must be an object of strings", errors).unwrap_or_default() {
        let name = format!("{key}.{}", k.replace('\0', "\\0"));
        match v {
            Value::String(s) => {
                if storable(&name, &k, MAX_KEY_BYTES, errors) && storable(&name, &s, MAX_TEXT_BYTES, errors) {
                    out.insert(k, s);
                }
            }
            _ => errors.add(&name, "must be a string"),
        }
    }
    out
}

/// Checks the payload field by field; the error names every bad field.
pub fn parse_notification(bytes: &[u8]) -> Result<Notification, ApiError> {
    let b: Body = body::json_object(bytes, " (an Alertmanager notification)")?;
    let mut errors = Errors::default();
    if !matches!(&b.version, Field::Valid(v) if v == "4") {
        errors.add("version", "must be \"4\" (Alertmanager's webhook payload version)");
    }
    let group_key = match b.group_key {
        Field::Valid(k) if !k.is_empty() && storable("groupKey", &k, MAX_KEY_BYTES, &mut errors) => k,
        Field::Valid(k) if !k.is_empty() => String::new(),
        _ => {
            errors.add("groupKey", "required, a non-empty string");
            String::new()
        }
    };
    let status = match &b.status {
        Field::Valid(s) => Status::parse(Some(s)),
        _ => None,
    };
    if status.is_none() {
        errors.add("status", "must be \"firing\" or \"resolved\"");
    }
    let receiver = b.receiver.get("receiver", "must be a string", &mut errors).unwrap_or_default();
    let receiver =
        if storable("receiver", &receiver, MAX_KEY_BYTES, &mut errors) { receiver } else { String::new() };
    let group_labels = labels(b.group_labels, "groupLabels", &mut errors);
    let common_labels = labels(b.common_labels, "commonLabels", &mut errors);
    let common_annotations = labels(b.common_annotations, "commonAnnotations", &mut errors);
    let mut alerts = Vec::new();
    match b.alerts {
        Field::Valid(list) if !list.is_empty() => {
            for (i, a) in list.into_iter().enumerate() {
                if let Some(alert) = check_alert(i, a, &mut errors) {
                    alerts.push(alert);
                }
            }
        }
        Field::Valid(_) => errors.add("alerts", "must not be empty"),
        Field::Null | Field::Invalid => errors.add("alerts", "must be an array of alerts"),
        Field::Absent => errors.add("alerts", "required"),
    }
    match status {
        Some(status) if errors.is_empty() => Ok(Notification {
            group_key,
            status,
            receiver,
            group_labels,
            common_labels,
            common_annotations,
            alerts,
        }),
        _ => Err(errors.error("fields")),
    }
}

/// Alert `i`, or `None` (with its errors recorded).
fn check_alert(i: usize, a: Value, errors: &mut Errors) -> Option<Alert> {
    if !a.is_object() {
        errors.add(&format!("alerts[{i}]"), "must be an object");
        return None;
    }
    let before = errors.len();
    let a = AlertBody::deserialize(a).unwrap_or_default();
    let status = match &a.status {
        Field::Valid(s) => Status::parse(Some(s)),
        _ => None,
    };
    if status.is_none() {
        errors.add(&format!("alerts[{i}].status"), "must be \"firing\" or \"resolved\"");
    }
    let alert_labels = labels(a.labels, &format!("alerts[{i}].labels"), errors);
    let annotations = labels(a.annotations, &format!("alerts[{i}].annotations"), errors);
    let starts_at = match &a.starts_at {
        Field::Valid(t) => DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc)),
        _ => None,
    };
    if starts_at.is_none() {
        errors.add(&format!("alerts[{i}].startsAt"), "required, an RFC 3339 time");
    }
    // Alertmanager always sends it; without one, the labels identify the alert.
    let fingerprint = match a.fingerprint {
        Field::Valid(f)
            if !f.is_empty() && storable(&format!("alerts[{i}].fingerprint"), &f, MAX_KEY_BYTES, errors) =>
        {
            f
        }
        Field::Valid(f) if !f.is_empty() => String::new(),
        Field::Absent | Field::Null => {
            let text = serde_json::to_string(&alert_labels).unwrap_or_default();
            hex::encode(&enqueue::sha256(&text)[..8])
        }
        Field::Valid(_) | Field::Invalid => {
            errors.add(&format!("alerts[{i}].fingerprint"), "must be a non-empty string");
            String::new()
        }
    };
    match (errors.len() == before, status, starts_at) {
        (true, Some(status), Some(starts_at)) => Some(Alert { status, annotations, starts_at, fingerprint }),
        _ => None,
    }
}

/// A notification for unit tests: group "Disk Full!", severity critical,
/// these common annotations and these alerts (annotations, status).
#[cfg(test)]
pub(super) fn sample(common: &[(&str, &str)], alerts: &[(&[(&str, &str)], &str)]) -> Notification {
    let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Notification {
        group_key: "{}:{alertname=\"DiskFull\"}".into(),
        status: Status::Firing,
        receiver: "tocsin".into(),
        group_labels: map(&[("alertname", "Disk Full!")]),
        common_labels: map(&[("severity", "critical")]),
        common_annotations: map(common),
        alerts: alerts
            .iter()
            .map(|(annotations, status)| Alert {
                status: if *status == "firing" { Status::Firing } else { Status::Resolved },
                annotations: map(annotations),
                starts_at: DateTime::parse_from_rfc3339("2026-11-22T10:15:30.5Z").unwrap().to_utc(),
                fingerprint: "abc".into(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_notification;

    #[test]
    fn payload_errors_name_every_field() {
        let body = json!({
            "version": "3",
            "status": "burning",
            "commonLabels": {"a": 1},
            "alerts": [{"status": "firing", "labels": {}, "startsAt": "yesterday"}, 7],
        });
        let e = parse_notification(body.to_string().as_bytes()).unwrap_err();
        let m = format!("{e:?}");
        for field in
            ["version:", "groupKey:", "status:", "commonLabels.a:", "alerts[0].startsAt:", "alerts[1]:"]
        {
            assert!(m.contains(field), "{field} not named in {m}");
        }
    }
}
