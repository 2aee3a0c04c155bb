//! The `/api/v1` campaign API against the real PostgreSQL and RabbitMQ,
//! driven through the router: every error status, scopes and prefixes,
//! creation through the producer's pipeline (validation, dedupe,
//! do-not-call), idempotent retries, status and control.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tocsin_core::queue::Topology;
use tower::ServiceExt;

use crate::common;

type Harness = common::App;

async fn harness(extra: &[&str]) -> Harness {
    common::App::start("api", extra).await
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
        idem: Option<&str>,
    ) -> (StatusCode, Value, bool) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(i) = idem {
            req = req.header("idempotency-key", i);
        }
        let response =
            self.app.clone().oneshot(req.body(Body::from(body.unwrap_or_default())).unwrap()).await.unwrap();
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, value, replayed)
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not the standard error shape: {v}"))
}

fn campaign_body(name: &str, numbers: &[&str]) -> String {
    json!({
        "name": name,
        "message": "Severe storm warning.",
        "from": "+14155550100",
        "contacts": numbers.iter().map(|n| json!({"number": n})).collect::<Vec<_>>(),
    })
    .to_string()
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_get_401_and_scopes_and_prefixes_403() {
    let h = harness(&[]).await;
    let body = campaign_body("auth-1", &["+14155550101"]);

    let (s, v, _) = h.call("GET", "/api/v1/campaigns", None, None, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _, _) = h.call("GET", "/api/v1/campaigns", Some("not-a-key"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let forged = format!("tocsin_{}_{}", "0123456789ab", "0".repeat(64));
    let (s, _, _) = h.call("GET", "/api/v1/campaigns", Some(&forged), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A real key id with the wrong secret.
    let reader = h.key("reader", &["campaigns:read"], &[]).await;
    let wrong = format!("{}{}", &reader[..reader.len() - 4], "0000");
    let (s, _, _) = h.call("GET", "/api/v1/campaigns", Some(&wrong), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Scopes.
    let (s, _, _) = h.call("GET", "/api/v1/campaigns", Some(&reader), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&reader), Some(body.clone()), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(v["error"]["message"].as_str().unwrap().contains("campaigns:write"), "{v}");
    let (s, _, _) = h.call("POST", "/api/v1/campaigns/auth-1/pause", Some(&reader), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let writer = h.key("writer", &["campaigns:write"], &[]).await;
    let (s, _, _) = h.call("GET", "/api/v1/campaigns/auth-1", Some(&writer), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Campaign-name prefixes: outside is 403, inside works, lists are filtered.
    let ops = h.key("ops", &["campaigns:write", "campaigns:read", "campaigns:control"], &["ops-"]).await;
    let (s, _, _) = h.call("POST", "/api/v1/campaigns", Some(&ops), Some(body.clone()), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = h
        .call("POST", "/api/v1/campaigns", Some(&ops), Some(campaign_body("ops-1", &["+14155550102"])), None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&writer), Some(body), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v, _) = h.call("GET", "/api/v1/campaigns", Some(&ops), None, None).await;
    let names: Vec<&str> =
        v["campaigns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ops-1"]);
    let (s, _, _) = h.call("GET", "/api/v1/campaigns/auth-1", Some(&ops), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = h.call("POST", "/api/v1/campaigns/auth-1/cancel", Some(&ops), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Revoked keys stop working at once.
    assert!(tocsin_core::apikey::revoke(&h.db.pool, "reader").await.unwrap());
    let (s, _, _) = h.call("GET", "/api/v1/campaigns", Some(&reader), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.cleanup().await;
}

#[tokio::test]
async fn invalid_bodies_get_400_naming_every_field_and_oversize_413() {
    let h = harness(&["--api-max-body-bytes", "2048"]).await;
    let key = h.key("w", &["campaigns:write"], &[]).await;

    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some("{not json".into()), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some("{}".into()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let m = v["error"]["message"].as_str().unwrap();
    for field in ["name: required", "message: required", "contacts: required"] {
        assert!(m.contains(field), "{field} not named in {m}");
    }
    let bad = json!({
        "name": "bad name!",
        "message": "",
        "from": "12",
        "provider": "carrier-pigeon",
        "repeat": 11,
        "window": "9-5",
        "timezone": "Mars/Base",
        "colour": "red",
        "contacts": [{"number": "+14155550101"}, {"phone": "+1"}, 7],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(bad.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let m = v["error"]["message"].as_str().unwrap();
    for field in [
        "name:",
        "message:",
        "from:",
        "provider:",
        "repeat:",
        "window:",
        "timezone:",
        "colour:",
        "contacts[1]:",
        "contacts[2]:",
    ] {
        assert!(m.contains(field), "{field} not named in {m}");
    }
    assert!(!m.contains("contacts[0]"), "{m}");

    // A deadline: a time or a span, not both; a past one is named.
    let both = json!({
        "name": "deadline", "message": "m", "from": "+14155550100", "contacts": [{"number": "+14155550101"}],
        "expires_at": "2030-01-01T00:00:00Z", "expires_in": "2h",
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(both.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("expires_in: give either"), "{v}");
    let bad = json!({
        "name": "deadline", "message": "m", "from": "+14155550100", "contacts": [{"number": "+14155550101"}],
        "expires_in": "soon",
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(bad.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("expires_in:"), "{v}");
    let past = json!({
        "name": "deadline", "message": "m", "from": "+14155550100", "contacts": [{"number": "+14155550101"}],
        "expires_at": "2020-01-01T00:00:00Z",
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(past.to_string()), None).await;
    assert!(s.is_client_error(), "{s} {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expires_at"), "{v}");

    let many: Vec<String> = (0..200).map(|i| format!("+1415555{i:04}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (s, v, _) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(campaign_body("big", &refs)), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    let (s, v, _) = h.call("GET", "/api/v1/nothing-here", Some(&key), None, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    h.cleanup().await;
}

#[tokio::test]
async fn a_campaign_whose_every_contact_is_rejected_answers_422_naming_each_and_creates_nothing() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write", "campaigns:read"], &[]).await;
    // A UK number with one digit too many, and a duplicate of it.
    let body = campaign_body("all-bad", &["+4420794600001", "not a number"]);
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "contacts_rejected"), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("contacts[0]: invalid") && m.contains("contacts[1]: invalid"), "{m}");
    let rejected: Vec<(u64, &str)> = v["error"]["rejected"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejected list: {v}"))
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, [(0, "invalid"), (1, "invalid")]);
    let campaigns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaigns").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(campaigns, 0, "nothing may be created");
    let (s, v, _) = h.call("GET", "/api/v1/campaigns/all-bad", Some(&key), None, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    // Valid numbers, all on the do-not-call list: nothing is created either.
    sqlx::query("INSERT INTO do_not_call (number) VALUES ('+14155550171'), ('+14155550172')")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let body = campaign_body("all-dnc", &["+14155550171", "+14155550172"]);
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "contacts_rejected"), "{v}");
    assert_eq!(v["error"]["rejected"][1]["reason"], "do_not_call", "{v}");
    let campaigns: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaigns").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(campaigns, 0, "nothing may be created");

    // An existing campaign given only rejected contacts answers 200 with its report, as before.
    let body = campaign_body("kept", &["+14155550173"]);
    let (s, _, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let body = campaign_body("kept", &["+14155550171"]);
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!((s, v["enqueue"]["do_not_call"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn inline_contacts_may_carry_their_own_zone_so_a_window_needs_no_campaign_zone() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write", "campaigns:read"], &[]).await;
    let body = json!({
        "name": "windowed",
        "message": "School closed tomorrow.",
        "from": "+14155550100",
        "window": "08:00-20:00",
        "contacts": [{"number": "+14155550181", "timezone": "America/Chicago"}, {"number": "+14155550182"}],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.to_string()), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let zone: Option<String> = sqlx::query_scalar("SELECT timezone FROM calls WHERE number = '+14155550181'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(zone.as_deref(), Some("America/Chicago"));
    h.cleanup().await;
}

#[tokio::test]
async fn creation_uses_the_producer_pipeline_and_idempotency_key_replays_the_first_answer() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write", "campaigns:read"], &[]).await;
    sqlx::query("INSERT INTO do_not_call (number, reason) VALUES ('+14155550104', 'asked')")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let body = campaign_body(
        "storm",
        &["+14155550101", "+1 415 555 0102", "not a number", "+14155550101", "+14155550104"],
    );

    let (s, first, replayed) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.clone()), Some("req-1")).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert!(!replayed);
    let e = &first["enqueue"];
    assert_eq!(e["new_contacts"], 2, "{first}");
    assert_eq!(e["published"], 2);
    assert_eq!(
        (e["invalid"].as_u64(), e["duplicate"].as_u64(), e["do_not_call"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    let rejected: Vec<(u64, &str)> = e["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(rejected, [(2, "invalid"), (3, "duplicate"), (4, "do_not_call")]);
    assert_eq!(first["campaign"]["states"]["queued"], 2);
    let enqueued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM calls c JOIN enqueue_batches b ON b.id = c.enqueue_batch")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(enqueued, 2);

    // The same key and body: the first answer again, nothing enqueued twice.
    let (s, again, replayed) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.clone()), Some("req-1")).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(replayed);
    assert_eq!(again, first);
    // The same key with another body is refused.
    let other = campaign_body("storm", &["+14155550109"]);
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(other), Some("req-1")).await;
    assert_eq!((s, error_code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    // Without the key, the producer's own idempotency still holds.
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["enqueue"]["new_contacts"].as_u64(), v["enqueue"]["already_enqueued"].as_u64()),
        (Some(0), Some(2))
    );
    // A changed message is refused like `producer enqueue` without --update-message.
    let changed = json!({"name": "storm", "message": "Another text.", "from": "+14155550100",
                         "contacts": [{"number": "+14155550101"}]});
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(changed.to_string()), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");

    // One job per new contact reached the work queue.
    let conn = tocsin_core::queue::connect(&h.amqp_url, "count").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            Topology::new(&h.prefix).work_queue().as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 2);
    h.cleanup().await;
}

#[tokio::test]
async fn status_and_control_with_404_and_409() {
    let h = harness(&[]).await;
    let key = h.key("all", &["campaigns:write", "campaigns:read", "campaigns:control"], &[]).await;
    let (s, v, _) = h.call("GET", "/api/v1/campaigns/nope", Some(&key), None, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _, _) = h.call("POST", "/api/v1/campaigns/nope/pause", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let body = campaign_body("drill", &["+14155550101", "+14155550102", "+14155550103"]);
    let (s, _, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v, _) = h.call("GET", "/api/v1/campaigns/drill", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["status"].as_str(), v["total"].as_i64(), v["finished"].as_i64()),
        (Some("active"), Some(3), Some(0))
    );

    let (_, v, _) = h.call("POST", "/api/v1/campaigns/drill/pause", Some(&key), None, None).await;
    assert_eq!((v["changed"].as_bool(), v["campaign"]["status"].as_str()), (Some(true), Some("paused")));
    let (_, v, _) = h.call("POST", "/api/v1/campaigns/drill/pause", Some(&key), None, None).await;
    assert_eq!(v["changed"], false);
    let (_, v, _) = h.call("POST", "/api/v1/campaigns/drill/resume", Some(&key), None, None).await;
    assert_eq!(v["campaign"]["status"], "active");
    let (s, v, _) = h.call("POST", "/api/v1/campaigns/drill/cancel", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["cancelled_calls"].as_u64(), v["campaign"]["states"]["cancelled"].as_i64()),
        (Some(3), Some(3))
    );
    let (s, v, _) = h.call("POST", "/api/v1/campaigns/drill/resume", Some(&key), None, None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    h.cleanup().await;
}

#[tokio::test]
async fn a_campaign_from_a_saved_contact_list() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write"], &["ops-"]).await;
    let report =
        h.save_list("oncall", "name,number\nAda,+14155550101\nBob,+14155550102\nCy,+14155550103\n").await;
    assert_eq!(report.saved, 3);
    // Put on the do-not-call list after the import: still never called.
    sqlx::query("INSERT INTO do_not_call (number) VALUES ('+14155550103')")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let body = |name: &str, list: &str| {
        json!({"name": name, "message": "Bridge call now.", "from": "+14155550100", "contact_list": list})
            .to_string()
    };

    let (s, v, _) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body("ops-page", "oncall")), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let e = &v["enqueue"];
    assert_eq!(
        (
            e["contacts"].as_u64(),
            e["new_contacts"].as_u64(),
            e["published"].as_u64(),
            e["do_not_call"].as_u64()
        ),
        (Some(3), Some(2), Some(2), Some(1)),
        "{v}"
    );
    // A saved list's rejections are named by the line of the imported file.
    assert_eq!(e["rejected"][0]["line"], 4, "{v}");
    assert_eq!(v["campaign"]["states"]["queued"], 2);
    let attrs: Value = sqlx::query_scalar("SELECT attributes FROM calls WHERE number = '+14155550101'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(attrs, json!({"name": "Ada"}));
    // Again: nothing new.
    let (s, v, _) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body("ops-page", "oncall")), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["enqueue"]["new_contacts"].as_u64(), v["enqueue"]["published"].as_u64()),
        (Some(0), Some(0))
    );

    // Unknown list: 400 naming the field, and no campaign.
    let (s, v, _) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body("ops-x", "nobody")), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("contact_list:") && m.contains("\"nobody\""), "{m}");
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns WHERE name = 'ops-x'")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(made, 0);
    // Both or an invalid name: 400 naming the field.
    let both = json!({"name": "ops-y", "message": "m", "from": "+14155550100", "contact_list": "oncall",
                      "contacts": [{"number": "+14155550101"}]});
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(both.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("contacts: give either"), "{v}");
    let (s, v, _) =
        h.call("POST", "/api/v1/campaigns", Some(&key), Some(body("ops-y", "bad name!")), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("contact_list:"), "{v}");
    // Scope rules unchanged: a list does not widen the key's prefixes.
    let (s, _, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body("page", "oncall")), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    h.cleanup().await;
}

#[test]
fn openapi_file_documents_every_route() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    for path in [
        "/api/v1/campaigns:",
        "/api/v1/campaigns/{name}:",
        "/api/v1/campaigns/{name}/pause:",
        "/api/v1/campaigns/{name}/resume:",
        "/api/v1/campaigns/{name}/cancel:",
        "/api/v1/campaigns/{name}/events:",
        "/api/v1/campaigns/{name}/calls:",
        "/api/v1/campaigns/{name}/calls/{id}:",
        "/api/v1/campaigns/{name}/calls.csv:",
        "/api/v1/campaigns/{name}/series:",
        "/api/v1/alertmanager:",
        "/api/v1/audit:",
        "/api/v1/accounts:",
        "/api/v1/lists:",
        "/api/v1/lists/{name}:",
        "/vonage/input:",
        "/twilio/gather:",
    ] {
        assert!(spec.contains(&format!("\n  {path}\n")), "{path} is not in webhook/openapi.yaml");
    }
}

#[tokio::test]
async fn a_campaigns_calls_export_as_csv_with_every_contact_and_its_columns() {
    let h = harness(&[]).await;
    let key = h.key("exporter", &["campaigns:write", "campaigns:read"], &["ops-"]).await;
    let body = json!({
        "name": "ops-export", "message": "m", "from": "+14155550100",
        "contacts": [
            {"number": "+14155550101", "name": "Ann, \"the\" boss"},
            {"number": "+14155550102", "name": "Zoë Ødegård 李"},
        ],
    });
    let (s, _, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.to_string()), None).await;
    assert_eq!(s, StatusCode::CREATED);
    let get = |path: &str, key: &str| {
        Request::get(path).header("authorization", format!("Bearer {key}")).body(Body::empty()).unwrap()
    };
    let response = h.app.clone().oneshot(get("/api/v1/campaigns/ops-export/calls.csv", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(response.headers()["content-disposition"].to_str().unwrap().contains("ops-export-calls.csv"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], tocsin_core::export::HEADER.trim_end());
    assert_eq!(lines.len(), 3, "{text}");
    // Every contact, in list order, its attributes quoted as CSV, its state.
    assert!(
        lines[1]
            .starts_with("+14155550101,1,\"{\"\"name\"\": \"\"Ann, \\\"\"the\\\"\" boss\"\"}\",queued,0,"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("+14155550102,2,") && lines[2].contains("Zoë Ødegård 李"), "{}", lines[2]);
    // (One comma is inside the quoted attributes.)
    assert_eq!(lines[1].matches(',').count() - 1, lines[0].matches(',').count(), "{}", lines[1]);
    // The key's scope and prefixes apply; an unknown campaign is 404.
    let other = h.key("other", &["campaigns:read"], &["dev-"]).await;
    let response =
        h.app.clone().oneshot(get("/api/v1/campaigns/ops-export/calls.csv", &other)).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = h.app.clone().oneshot(get("/api/v1/campaigns/ops-none/calls.csv", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    h.cleanup().await;
}

#[tokio::test]
async fn every_action_through_the_api_is_in_the_audit_log_readable_with_its_scope() {
    let h = harness(&[]).await;
    let ops =
        h.key("ops-console", &["campaigns:write", "campaigns:read", "campaigns:control"], &["ops-"]).await;
    let (s, _, _) = h
        .call("POST", "/api/v1/campaigns", Some(&ops), Some(campaign_body("ops-a", &["+14155550101"])), None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for action in ["pause", "resume", "cancel"] {
        let (s, _, _) =
            h.call("POST", &format!("/api/v1/campaigns/ops-a/{action}"), Some(&ops), None, None).await;
        assert_eq!(s, StatusCode::OK);
    }
    // Another tenant's action, and one with no campaign (recorded by the CLI side).
    let dev = h.key("dev", &["campaigns:write"], &["dev-"]).await;
    let (s, _, _) = h
        .call("POST", "/api/v1/campaigns", Some(&dev), Some(campaign_body("dev-b", &["+14155550102"])), None)
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Without audit:read, 403.
    let (s, _, _) = h.call("GET", "/api/v1/audit", Some(&ops), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let auditor = h.key("auditor", &["audit:read"], &[]).await;
    let (s, v, _) = h.call("GET", "/api/v1/audit", Some(&auditor), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let entries = v["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap(), e["campaign"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("campaign.enqueue", "dev", "dev-b"),
            ("campaign.cancel", "ops-console", "ops-a"),
            ("campaign.resume", "ops-console", "ops-a"),
            ("campaign.pause", "ops-console", "ops-a"),
            ("campaign.enqueue", "ops-console", "ops-a"),
        ]
    );
    assert!(entries.iter().all(|e| e["via"] == "api"), "{v}");
    assert_eq!(entries[4]["details"]["contacts"]["inline"], 1, "{v}");
    assert_eq!(entries[1]["details"]["changed"], true, "{v}");
    // No key, token or number leaks into the log.
    let text = v.to_string();
    assert!(!text.contains("tocsin_") && !text.contains("+1415555010"), "{text}");
    // An auditor limited to a prefix sees only those campaigns; a filter narrows further.
    let scoped = h.key("ops-auditor", &["audit:read"], &["ops-"]).await;
    let (_, v, _) = h.call("GET", "/api/v1/audit?campaign=ops-a&limit=2", Some(&scoped), None, None).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let (s, _, _) = h.call("GET", "/api/v1/audit?campaign=dev-b", Some(&scoped), None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v, _) = h.call("GET", "/api/v1/audit", Some(&scoped), None, None).await;
    assert!(v["entries"].as_array().unwrap().iter().all(|e| e["campaign"] == "ops-a"), "{v}");
    let (s, _, _) = h.call("GET", "/api/v1/audit?since=yesterday", Some(&auditor), None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.cleanup().await;
}

#[tokio::test]
async fn a_contact_that_cannot_fill_the_message_is_rejected_by_name_and_a_bad_placeholder_is_a_400() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write", "campaigns:read"], &[]).await;
    let body = json!({
        "name": "personal", "message": "Hello {{name}}, go to {{site|the gym}}.", "from": "+14155550100",
        "contacts": [{"number": "+14155550101", "name": "Ann"}, {"number": "+14155550102", "site": "Hall"}],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.to_string()), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["enqueue"]["new_contacts"], 1, "{v}");
    let rejected = &v["enqueue"]["rejected"][0];
    assert_eq!((rejected["index"].as_u64(), rejected["reason"].as_str()), (Some(1), Some("template")), "{v}");
    assert!(rejected["detail"].as_str().unwrap().contains("no value for {{name}}"), "{v}");
    let bad = json!({
        "name": "personal-bad", "message": "Hello {{name", "from": "+14155550100",
        "contacts": [{"number": "+14155550101"}],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(bad.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("message: the placeholder opened at character 7"),
        "{v}"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn the_series_for_the_charts_count_attempts_outcomes_and_confirmations_over_time() {
    let h = harness(&["--rate-per-sec", "20"]).await;
    let key = h.key("r", &["campaigns:write", "campaigns:read"], &[]).await;
    let (s, v, _) = h.call("GET", "/api/v1/campaigns/nothing/series", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _, _) = h
        .call(
            "POST",
            "/api/v1/campaigns",
            Some(&key),
            Some(campaign_body("charted", &["+14155550101", "+14155550102"])),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Nothing has happened yet: no series.
    let (_, v, _) = h.call("GET", "/api/v1/campaigns/charted/series", Some(&key), None, None).await;
    assert_eq!(v["start"], Value::Null, "{v}");
    let ids: Vec<tocsin_core::CallId> =
        sqlx::query_scalar("SELECT id FROM calls").fetch_all(&h.db.pool).await.unwrap();
    tocsin_core::calls::stage(&h.db.pool, &ids, tocsin_core::CallState::Dialing).await.unwrap();
    tocsin_core::calls::stage(&h.db.pool, &ids[..1], tocsin_core::CallState::Completed).await.unwrap();
    tocsin_core::calls::stage(&h.db.pool, &ids[1..], tocsin_core::CallState::Busy).await.unwrap();
    let (s, v, _) = h.call("GET", "/api/v1/campaigns/charted/series", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sum =
        |k: &str| v["series"][k].as_array().map_or(0, |a| a.iter().map(|n| n.as_i64().unwrap()).sum::<i64>());
    assert_eq!((sum("dialing"), sum("completed"), sum("busy")), (2, 1, 1), "{v}");
    assert_eq!(v["limit"], 20.0, "{v}");
    assert!(v["step_secs"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(v["time_to_confirm"], Value::Null, "no one confirmed yet: {v}");
    // Confirmed 20 s and 2 h after the first call: the 30 s bucket and the last.
    sqlx::query(
        "UPDATE calls SET first_dialing_at = now() - interval '3 hours', confirmed_at = now() - interval '3 hours' \
         + CASE WHEN id = $1 THEN interval '20 seconds' ELSE interval '2 hours' END",
    )
    .bind(ids[0])
    .execute(&h.db.pool)
    .await
    .unwrap();
    let (_, v, _) = h.call("GET", "/api/v1/campaigns/charted/series", Some(&key), None, None).await;
    let ttc = &v["time_to_confirm"];
    assert_eq!(ttc["bounds_secs"][1], 30.0, "{v}");
    assert_eq!(ttc["counts"], json!([0, 1, 0, 0, 0, 0, 0, 0, 1]), "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn a_campaign_may_play_a_recording_instead_of_a_message_and_a_bad_url_is_named() {
    let h = harness(&[]).await;
    let key = h.key("w", &["campaigns:write", "campaigns:read"], &[]).await;
    let body = json!({
        "name": "recorded", "audio_url": "https://media.example/alert.mp3", "from": "+14155550100",
        "contacts": [{"number": "+14155550101"}],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.to_string()), None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["campaign"]["audio_url"], "https://media.example/alert.mp3", "{v}");
    let bad = json!({
        "name": "recorded-bad", "audio_url": "file:///etc/passwd", "from": "+14155550100",
        "contacts": [{"number": "+14155550101"}],
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(bad.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("audio_url"), "{v}");
    let neither =
        json!({ "name": "silent", "from": "+14155550100", "contacts": [{"number": "+14155550101"}] });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(neither.to_string()), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("message: required"), "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn an_uploaded_list_is_read_as_it_arrives_with_its_rejected_lines_and_a_dry_run_writes_nothing() {
    let h = harness(&[]).await;
    let key = h.key("uploader", &["campaigns:write", "campaigns:read"], &[]).await;
    let put = |name: &str, query: &str, body: &'static str, key: &str| {
        Request::put(format!("/api/v1/lists/{name}{query}"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "text/csv")
            .body(Body::from(body))
            .unwrap()
    };
    let send = |r: Request<Body>| async {
        let response = h.app.clone().oneshot(r).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let csv = "number,name\n+14155550101,Ann\nnope,X\n+14155550102,Bo\n+14155550101,again\n";
    let (s, v) = send(put("oncall", "?filename=oncall.csv", csv, &key)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["list"]["saved"].as_u64(), v["rejected_total"].as_u64()), (Some(2), Some(2)), "{v}");
    let lines: Vec<u64> =
        v["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [3, 5], "{v}");
    assert_eq!(v["rejected"][0]["reason"], "invalid", "{v}");
    let (s, v, _) = h.call("GET", "/api/v1/lists", Some(&key), None, None).await;
    assert_eq!(
        (s, v["lists"][0]["name"].as_str(), v["lists"][0]["contacts"].as_i64()),
        (StatusCode::OK, Some("oncall"), Some(2))
    );
    // A bad format, and a key limited to campaign prefixes (lists are shared).
    let (s, _) = send(put("oncall", "?format=xls", csv, &key)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let scoped = h.key("scoped", &["campaigns:write"], &["ops-"]).await;
    let (s, _) = send(put("oncall", "", csv, &scoped)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A dry run from the list: what would happen, nothing written.
    let body = json!({
        "name": "from-upload", "message": "Hi {{name}}.", "from": "+14155550100", "contact_list": "oncall",
        "dry_run": true,
    });
    let (s, v, _) = h.call("POST", "/api/v1/campaigns", Some(&key), Some(body.to_string()), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["enqueue"]["new_contacts"], 2, "{v}");
    assert_eq!(v["enqueue"]["preview"][0]["text"], "Hi Ann.", "{v}");
    let (s, _, _) = h.call("GET", "/api/v1/campaigns/from-upload", Some(&key), None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a dry run creates nothing");
    h.cleanup().await;
}
