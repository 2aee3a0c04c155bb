//! `POST /api/v1/alertmanager` against the real PostgreSQL and RabbitMQ,
//! driven through the router with Alertmanager's own payloads: one
//! broadcast per group and firing period (repeats and retries call nobody
//! again), resolved notifications recorded and cancelling waiting calls when
//! asked, a new firing after a resolve starting a new broadcast, and every
//! error status.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tocsin_core::queue::Topology;
use tower::ServiceExt;

use crate::common;

type Harness = common::App;

async fn harness() -> Harness {
    common::App::start("am", &[]).await
}

impl Harness {
    async fn post(&self, uri: &str, key: Option<&str>, body: String) -> (StatusCode, Value) {
        let mut req = Request::builder().method("POST").uri(uri).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let response = self.app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    async fn save_numbers(&self, name: &str, numbers: &[&str]) {
        let mut csv = String::from("number\n");
        for n in numbers {
            csv.push_str(n);
            csv.push('\n');
        }
        self.save_list(name, &csv).await;
    }

    async fn jobs_queued(&self) -> u32 {
        let conn = tocsin_core::queue::connect(&self.amqp_url, "count").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                Topology::new(&self.prefix).work_queue().as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .unwrap();
        tocsin_core::queue::close(&conn, "done").await;
        q.message_count()
    }

    async fn scalar(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db.pool).await.unwrap()
    }
}

const ROUTE: &str = "/api/v1/alertmanager?contact_list=oncall&from=%2B14155550100";

/// An Alertmanager v4 notification for group `DiskFull` with `alerts`
/// (fingerprint, status, startsAt).
fn notification(status: &str, alerts: &[(&str, &str, &str)], extra_labels: &[(&str, &str)]) -> String {
    let mut common = json!({"alertname": "DiskFull", "severity": "critical"});
    for (k, v) in extra_labels {
        common[*k] = json!(v);
    }
    json!({
        "version": "4",
        "groupKey": "{}/{severity=\"critical\"}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "tocsin",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": common,
        "commonAnnotations": {"summary": "Disk almost full on db-1", "runbook_url": "http://runbooks/disk"},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts.iter().map(|(fp, st, starts)| json!({
            "status": st,
            "labels": {"alertname": "DiskFull", "instance": fp},
            "annotations": {"summary": "Disk almost full on db-1"},
            "startsAt": starts,
            "endsAt": if *st == "resolved" { "2026-11-22T11:00:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": fp,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not the standard error shape: {v}"))
}

#[tokio::test]
async fn one_broadcast_per_group_and_firing_period() {
    let h = harness().await;
    let key = h.key("alertmanager", &["campaigns:write"], &[]).await;
    h.save_numbers("oncall", &["+14155550101", "+14155550102", "+14155550103"]).await;
    let first = notification("firing", &[("aaa", "firing", "2026-11-22T10:00:00.123Z")], &[]);

    let (s, v) = h.post(ROUTE, Some(&key), first.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["action"], "started", "{v}");
    let campaign = v["campaign"].as_str().unwrap().to_owned();
    assert!(campaign.starts_with("alert-DiskFull-") && campaign.ends_with("-20261122T100000Z"), "{campaign}");
    assert_eq!(
        (v["enqueue"]["new_contacts"].as_u64(), v["enqueue"]["published"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(v["broadcast"]["states"]["queued"], 3);
    assert_eq!(h.jobs_queued().await, 3);
    let message: String = sqlx::query_scalar("SELECT message FROM campaigns WHERE name = $1")
        .bind(&campaign)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(message, "Critical alert: Disk almost full on db-1.");

    // Alertmanager's repeat (every repeat_interval) and its retry of the same
    // notification: the same period, nobody called again.
    for _ in 0..2 {
        let (s, v) = h.post(ROUTE, Some(&key), first.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["action"].as_str(), v["campaign"].as_str()),
            (Some("repeated"), Some(campaign.as_str()))
        );
        assert!(v.get("enqueue").is_none(), "{v}");
    }
    // Another alert joins the firing group: still the same period.
    let joined = notification(
        "firing",
        &[("aaa", "firing", "2026-11-22T10:00:00.123Z"), ("bbb", "firing", "2026-11-22T10:20:00Z")],
        &[],
    );
    let (_, v) = h.post(ROUTE, Some(&key), joined).await;
    assert_eq!(v["action"], "repeated", "{v}");
    assert_eq!(h.scalar("SELECT count(*) FROM campaigns").await, 1);
    assert_eq!(h.jobs_queued().await, 3, "nothing published again");

    // Resolved, with cancel_on_resolve: the calls not yet placed are cancelled.
    let resolved = notification(
        "resolved",
        &[("aaa", "resolved", "2026-11-22T10:00:00.123Z"), ("bbb", "resolved", "2026-11-22T10:20:00Z")],
        &[],
    );
    let (s, v) = h.post(&format!("{ROUTE}&cancel_on_resolve=true"), Some(&key), resolved.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["action"].as_str(), v["cancelled_calls"].as_u64()), (Some("cancelled"), Some(3)), "{v}");
    assert_eq!(v["broadcast"]["status"], "cancelled");
    assert_eq!(v["broadcast"]["states"]["cancelled"], 3);
    // A late retry of the first firing notification calls nobody either.
    let (_, v) = h.post(ROUTE, Some(&key), first).await;
    assert_eq!(v["action"], "late", "{v}");
    assert_eq!(h.scalar("SELECT count(*) FROM campaigns").await, 1);

    // The group fires again (new startsAt): a new period, a new broadcast.
    let again = notification("firing", &[("aaa", "firing", "2026-11-22T12:00:00Z")], &[]);
    let (_, v) = h.post(ROUTE, Some(&key), again).await;
    assert_eq!(v["action"], "started", "{v}");
    let second = v["campaign"].as_str().unwrap();
    assert_ne!(second, campaign);
    assert!(second.ends_with("-20261122T120000Z"), "{second}");
    assert_eq!(v["enqueue"]["published"], 3);
    assert_eq!(h.jobs_queued().await, 6);

    // Every notification is recorded with what was done.
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM alert_notifications ORDER BY id")
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(actions, ["started", "repeated", "repeated", "repeated", "cancelled", "late", "started"]);
    // The audit log keeps the broadcasts started and the one cancelled, by the key's name.
    let audited: Vec<(String, String, String)> =
        sqlx::query_as("SELECT action, via, actor FROM audit_log ORDER BY id")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    let verbs: Vec<&str> = audited.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(verbs, ["alertmanager.broadcast", "alertmanager.cancel", "alertmanager.broadcast"]);
    assert!(audited.iter().all(|(_, via, _)| via == "alertmanager"), "{audited:?}");
    let payload_kept =
        h.scalar("SELECT count(*) FROM alert_notifications WHERE payload->>'version' = '4'").await;
    assert_eq!(payload_kept, 7);
    h.cleanup().await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_group_start_one_broadcast() {
    let h = harness().await;
    let key = h.key("alertmanager", &["campaigns:write"], &[]).await;
    let numbers: Vec<String> = (0..300).map(|i| format!("+1415555{i:04}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    h.save_numbers("oncall", &refs).await;
    // Two Alertmanager HA peers (or a retry after a timeout) deliver the same
    // notification at once; the second waits for the first's enqueue.
    let body = notification("firing", &[("aaa", "firing", "2026-11-22T10:00:00Z")], &[]);
    let ((s1, v1), (s2, v2)) =
        tokio::join!(h.post(ROUTE, Some(&key), body.clone()), h.post(ROUTE, Some(&key), body.clone()));
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{v1} {v2}");
    let mut actions = [v1["action"].as_str().unwrap(), v2["action"].as_str().unwrap()];
    actions.sort_unstable();
    assert_eq!(actions, ["repeated", "started"]);
    assert_eq!(v1["campaign"], v2["campaign"]);
    assert_eq!(h.scalar("SELECT count(*) FROM campaigns").await, 1);
    assert_eq!(h.jobs_queued().await, 300);
    h.cleanup().await;
}

#[tokio::test]
async fn resolved_without_cancel_is_recorded_and_leaves_the_calls() {
    let h = harness().await;
    let key = h.key("alertmanager", &["campaigns:write"], &[]).await;
    h.save_numbers("oncall", &["+14155550101", "+14155550102"]).await;
    h.save_numbers("dba", &["+14155550109"]).await;
    // The label names the list, overriding the route's.
    let firing = notification(
        "firing",
        &[("ccc", "firing", "2026-11-22T10:00:00Z")],
        &[("tocsin_contact_list", "dba")],
    );
    let (s, v) = h.post(ROUTE, Some(&key), firing).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["contact_list"].as_str(), v["enqueue"]["published"].as_u64()), (Some("dba"), Some(1)));
    let campaign = v["campaign"].as_str().unwrap().to_owned();

    let resolved = notification("resolved", &[("ccc", "resolved", "2026-11-22T10:00:00Z")], &[]);
    let (s, v) = h.post(ROUTE, Some(&key), resolved).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["action"].as_str(), v["cancelled_calls"].as_u64()), (Some("resolved"), Some(0)));
    assert_eq!(v["broadcast"]["status"], "active");
    let resolved_at = h.scalar("SELECT count(*) FROM alert_periods WHERE resolved_at IS NOT NULL").await;
    assert_eq!(resolved_at, 1);
    // A label asks for the cancel even though the route does not.
    let resolved = notification(
        "resolved",
        &[("ccc", "resolved", "2026-11-22T10:00:00Z")],
        &[("tocsin_cancel_on_resolve", "true")],
    );
    let (_, v) = h.post(ROUTE, Some(&key), resolved).await;
    assert_eq!((v["action"].as_str(), v["cancelled_calls"].as_u64()), (Some("cancelled"), Some(1)), "{v}");
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls c JOIN campaigns p ON p.id = c.campaign_id \
         WHERE p.name = $1 AND c.state = 'cancelled'",
    )
    .bind(&campaign)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(cancelled, 1);
    // Resolved alerts we never saw fire: recorded, nothing else.
    let unknown = notification("resolved", &[("zzz", "resolved", "2026-11-20T10:00:00Z")], &[]);
    let (s, v) = h.post(ROUTE, Some(&key), unknown).await;
    assert_eq!((s, v["action"].as_str()), (StatusCode::OK, Some("no_period")));
    assert_eq!(h.scalar("SELECT count(*) FROM alert_notifications").await, 4);
    h.cleanup().await;
}

#[tokio::test]
async fn errors_401_403_and_400_naming_the_field() {
    let h = harness().await;
    let writer = h.key("alertmanager", &["campaigns:write"], &[]).await;
    let reader = h.key("reader", &["campaigns:read"], &[]).await;
    let ops = h.key("ops", &["campaigns:write"], &["ops-"]).await;
    h.save_numbers("oncall", &["+14155550101"]).await;
    let good = notification("firing", &[("aaa", "firing", "2026-11-22T10:00:00Z")], &[]);

    let (s, v) = h.post(ROUTE, None, good.clone()).await;
    assert_eq!((s, error_code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = h.post(ROUTE, Some("tocsin_nonsense"), good.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = h.post(ROUTE, Some(&reader), good.clone()).await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(v["error"]["message"].as_str().unwrap().contains("campaigns:write"), "{v}");
    // The derived campaign name is outside the key's prefix, unless the route's prefix puts it inside.
    let (s, _) = h.post(ROUTE, Some(&ops), good.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h.post(&format!("{ROUTE}&campaign_prefix=ops-"), Some(&ops), good.clone()).await;
    assert_eq!((s, v["action"].as_str()), (StatusCode::OK, Some("started")), "{v}");
    assert!(v["campaign"].as_str().unwrap().starts_with("ops-DiskFull-"), "{v}");

    let bad_request = |v: &Value| v["error"]["message"].as_str().unwrap().to_owned();
    let (s, v) = h.post(ROUTE, Some(&writer), "{not json".into()).await;
    assert_eq!((s, error_code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let broken = json!({
        "version": "4",
        "status": "firing",
        "groupLabels": {},
        "commonLabels": {"severity": 2},
        "alerts": [{"status": "firing", "labels": {}, "annotations": {}, "fingerprint": "x"}],
    });
    let (s, v) = h.post(ROUTE, Some(&writer), broken.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let m = bad_request(&v);
    for field in ["groupKey:", "commonLabels.severity:", "alerts[0].startsAt:"] {
        assert!(m.contains(field), "{field} not named in {m}");
    }
    let (s, v) = h
        .post(
            ROUTE,
            Some(&writer),
            json!({"version": "4", "groupKey": "g", "status": "firing", "alerts": []}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad_request(&v).contains("alerts:"), "{v}");

    // Oversized and unstorable input is a 4xx naming the field, never a 503
    // Alertmanager would retry for ever.
    let mut huge: Value = serde_json::from_str(&good).unwrap();
    huge["groupKey"] = json!("k".repeat(1 << 20));
    let (s, v) = h.post(ROUTE, Some(&writer), huge.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(bad_request(&v).contains("groupKey: must be at most 2048 bytes"), "{v}");
    let mut nul: Value = serde_json::from_str(&good).unwrap();
    nul["commonLabels"]["team"] = json!("ops\u{0}db");
    nul["alerts"][0]["annotations"]["summary"] = json!("disk\u{0}full");
    let (s, v) = h.post(ROUTE, Some(&writer), nul.to_string()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for field in
        ["commonLabels.team: must not contain a NUL", "alerts[0].annotations.summary: must not contain a NUL"]
    {
        assert!(bad_request(&v).contains(field), "{field}: {v}");
    }

    // Route configuration errors name the parameter or label.
    let (s, v) = h.post("/api/v1/alertmanager?from=%2B14155550100", Some(&writer), good.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad_request(&v).starts_with("contact_list: required"), "{v}");
    let (s, v) = h.post("/api/v1/alertmanager?contact_list=oncall", Some(&writer), good.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad_request(&v).starts_with("from: required"), "{v}");
    let (s, v) = h
        .post("/api/v1/alertmanager?contact_list=nobody&from=%2B14155550100", Some(&writer), good.clone())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad_request(&v).starts_with("contact_list: no saved contact list named \"nobody\""), "{v}");
    let labelled = notification(
        "firing",
        &[("aaa", "firing", "2026-11-22T10:00:00Z")],
        &[("tocsin_contact_list", "ghosts")],
    );
    let (s, v) = h.post(ROUTE, Some(&writer), labelled).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad_request(&v).starts_with("commonLabels.tocsin_contact_list: no saved contact list"), "{v}");
    let (s, v) = h.post(&format!("{ROUTE}&contactlist=x&repeat=99"), Some(&writer), good).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let m = bad_request(&v);
    assert!(m.contains("contactlist: unknown query parameter") && m.contains("repeat:"), "{m}");

    // Nothing was recorded for refused requests; only the one accepted.
    assert_eq!(h.scalar("SELECT count(*) FROM alert_notifications").await, 1);
    assert_eq!(h.scalar("SELECT count(*) FROM campaigns").await, 1);
    h.cleanup().await;
}

#[tokio::test]
async fn alert_groups_are_scoped_to_the_callers_prefix() {
    // Two tenants whose Alertmanagers send the same group key, each with a
    // key restricted to its own prefix and a route naming that prefix.
    let h = harness().await;
    let a = h.key("team-a", &["campaigns:write"], &["a-"]).await;
    let b = h.key("team-b", &["campaigns:write"], &["b-"]).await;
    h.save_numbers("oncall", &["+14155550101", "+14155550102"]).await;
    let route = |prefix: &str| format!("{ROUTE}&campaign_prefix={prefix}&cancel_on_resolve=true");
    let firing = notification("firing", &[("aaa", "firing", "2026-11-22T10:00:00Z")], &[]);
    let resolved = notification("resolved", &[("aaa", "resolved", "2026-11-22T10:00:00Z")], &[]);

    let (s, v) = h.post(&route("a-"), Some(&a), firing.clone()).await;
    assert_eq!((s, v["action"].as_str()), (StatusCode::OK, Some("started")), "{v}");
    let a_campaign = v["campaign"].as_str().unwrap().to_owned();

    // B's resolved of the same group neither closes A's period nor names
    // A's campaign (it used to do both, and cancel A's calls).
    let (s, v) = h.post(&route("b-"), Some(&b), resolved.clone()).await;
    assert_eq!((s, v["action"].as_str()), (StatusCode::OK, Some("no_period")), "{v}");
    assert!(!v.to_string().contains(&a_campaign), "{v}");
    // Nor can B use A's prefix.
    let (s, _) = h.post(&route("a-"), Some(&b), resolved.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // B's firing of the same group is B's own period; it does not close A's,
    // so A's next repeat is a repeat, not a second broadcast to A's people.
    let (s, v) = h.post(&route("b-"), Some(&b), firing.clone()).await;
    assert_eq!((s, v["action"].as_str()), (StatusCode::OK, Some("started")), "{v}");
    assert!(v["campaign"].as_str().unwrap().starts_with("b-"), "{v}");
    let (s, v) = h.post(&route("a-"), Some(&a), firing.clone()).await;
    assert_eq!(
        (s, v["action"].as_str(), v["campaign"].as_str()),
        (StatusCode::OK, Some("repeated"), Some(a_campaign.as_str())),
        "{v}"
    );
    let a_calls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls k JOIN campaigns c ON c.id = k.campaign_id WHERE c.name = $1 AND k.state = 'queued'",
    )
    .bind(&a_campaign)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(a_calls, 2, "A's calls are untouched");
    h.cleanup().await;
}
