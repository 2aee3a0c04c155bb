//! The dashboard's routes (`/ui`: pages, assets, security headers) and the
//! calls API it reads (`GET /api/v1/campaigns/{name}/calls[/{id}]`), against
//! the real PostgreSQL. The pages' behaviour in a browser is tested by
//! `e2e/tests/ui_dashboard.rs`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tocsin_core::calls;
use tocsin_core::{CallId, CallState};
use tower::ServiceExt;

use crate::common;

type Harness = common::Keyed;

async fn harness() -> Harness {
    common::Keyed::start("ui").await
}

impl Harness {
    async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut req = Request::get(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let response = self.app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, body.to_vec())
    }

    async fn json(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.get(path, Some(&self.key)).await;
        (status, serde_json::from_slice(&body).unwrap())
    }
}

#[tokio::test]
async fn dashboard_pages_and_assets_are_served_with_a_self_only_policy() {
    let h = harness().await;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/campaigns/storm-1", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (status, headers, body) = h.get(path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert_eq!(csp, webhook::ui::CSP, "{path}");
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{path}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{path}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(!body.is_empty());
    }
    // The shell names its page and campaign, escaped, and loads nothing from elsewhere.
    let (_, _, page) = h.get("/ui/campaigns/a%3Cb%3E", None).await;
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(r#"data-page="campaign""#) && page.contains(r#"data-campaign="a&lt;b&gt;""#));
    assert!(!page.contains("<b>"));
    for asset in [page.as_str(), include_str!("../../src/ui/app.js"), include_str!("../../src/ui/app.css")] {
        assert!(!asset.contains("http://") && !asset.contains("https://"), "no external fetches");
        assert!(!asset.contains("style=\""), "no inline styles (the policy forbids them)");
    }
    assert!(!page.contains("<script>"), "no inline script (the policy forbids it)");
    let (status, headers, _) = h.get("/ui/", None).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (StatusCode::PERMANENT_REDIRECT, "/ui"));
    h.cleanup().await;
}

#[tokio::test]
async fn calls_are_listed_by_page_and_shown_with_their_timeline() {
    let h = harness().await;
    let numbers: Vec<String> = (0..5).map(|i| format!("+1415555{:04}", 3100 + i)).collect();
    let body = json!({
        "name": "ui-1", "message": "Test.", "from": "+14155550100",
        "contacts": numbers.iter().map(|n| json!({"number": n})).collect::<Vec<_>>(),
    });
    let req = Request::post("/api/v1/campaigns")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.app.clone().oneshot(req).await.unwrap().status(), StatusCode::CREATED);

    // Pages of two, in number order, until `next_after` runs out.
    let mut seen = Vec::new();
    let mut path = "/api/v1/campaigns/ui-1/calls?limit=2".to_owned();
    loop {
        let (status, page) = h.json(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let calls = page["calls"].as_array().unwrap();
        assert!(calls.len() <= 2);
        seen.extend(calls.iter().map(|c| c["number"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(after) => {
                path = format!("/api/v1/campaigns/ui-1/calls?limit=2&after={}", after.replace('+', "%2B"))
            }
            None => break,
        }
    }
    assert_eq!(seen, numbers);

    // A call moves; the state filter and the timeline see it.
    let moved: CallId = sqlx::query_scalar("SELECT id FROM calls WHERE number = $1")
        .bind(&numbers[1])
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    calls::stage(&h.db.pool, &[moved], CallState::Dialing).await.unwrap();
    calls::stage(&h.db.pool, &[moved], CallState::Placed).await.unwrap();
    let (_, page) = h.json("/api/v1/campaigns/ui-1/calls?state=placed").await;
    let calls = page["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0]["number"].as_str(), calls[0]["attempt"].as_i64()),
        (Some(numbers[1].as_str()), Some(1))
    );
    let id = calls[0]["id"].as_str().unwrap();
    let (status, t) = h.json(&format!("/api/v1/campaigns/ui-1/calls/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["call"]["state"], "placed");
    let states: Vec<&str> =
        t["states"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["dialing", "placed"]);
    assert_eq!(t["events"], json!([]));

    // Errors in the standard shape.
    let code = |v: &Value| v["error"]["code"].as_str().map(str::to_owned);
    for (path, want) in [
        ("/api/v1/campaigns/ui-1/calls?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/campaigns/ui-1/calls?limit=501", StatusCode::BAD_REQUEST),
        ("/api/v1/campaigns/ui-1/calls?state=bogus", StatusCode::BAD_REQUEST),
        ("/api/v1/campaigns/ui-1/calls/not-a-uuid", StatusCode::BAD_REQUEST),
        ("/api/v1/campaigns/nope/calls", StatusCode::NOT_FOUND),
        ("/api/v1/campaigns/ui-1/calls/00000000-0000-0000-0000-000000000000", StatusCode::NOT_FOUND),
    ] {
        let (status, v) = h.json(path).await;
        assert_eq!(status, want, "{path}: {v}");
        assert!(code(&v).is_some(), "{path}: {v}");
    }
    let (status, _, _) = h.get("/api/v1/campaigns/ui-1/calls", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A key without campaigns:read, and one limited to other campaigns.
    let writer = tocsin_core::apikey::create(&h.db.pool, "writer", &["campaigns:write".to_owned()], &[])
        .await
        .unwrap();
    let (status, _, _) = h.get("/api/v1/campaigns/ui-1/calls", Some(&writer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other = tocsin_core::apikey::create(
        &h.db.pool,
        "other",
        &["campaigns:read".to_owned()],
        &["other-".to_owned()],
    )
    .await
    .unwrap();
    let (status, _, _) = h.get(&format!("/api/v1/campaigns/ui-1/calls/{id}"), Some(&other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    h.cleanup().await;
}
