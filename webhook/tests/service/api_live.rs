//! The live stream `GET /api/v1/campaigns/{name}/events` against the real
//! PostgreSQL: changes arrive as they commit, a reconnect with
//! `Last-Event-ID` resumes without gaps (also when transactions commit out
//! of their log-id order), `Last-Event-ID: 0` replays everything, and the
//! stream's errors use the standard shape.

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use serde_json::{Value, json};
use tocsin_core::CallState;
use tocsin_core::calls;
use tower::ServiceExt;

use crate::common;

type Harness = common::Keyed;

async fn harness() -> Harness {
    common::Keyed::start("live").await
}

/// One SSE event: (event, data, id).
type Sse = (String, Value, Option<String>);

struct Stream {
    body: BodyDataStream,
    buf: String,
}

impl Stream {
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = (String::new(), String::new(), None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    }
                }
                if event.is_empty() {
                    continue; // keep-alive comment
                }
                return (event, serde_json::from_str(&data).unwrap(), id);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("no SSE event within 10 s")
                .expect("the stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Batches until `n` `call` events have arrived: a resumed stream's first
    /// batch may be only the counters, its changes following with the feed's
    /// next read (batch boundaries are not part of the contract; order is).
    async fn calls(&mut self, n: usize) -> (Vec<(String, String)>, Value, String) {
        let mut all = Vec::new();
        loop {
            let (calls, counts, id) = self.batch().await;
            all.extend(calls);
            if all.len() >= n {
                return (all, counts, id);
            }
        }
    }

    /// `call` events up to the next `counts`: ((number's call id, state) list, counts, id).
    async fn batch(&mut self) -> (Vec<(String, String)>, Value, String) {
        let mut calls = Vec::new();
        loop {
            let (event, data, id) = self.next().await;
            match event.as_str() {
                "call" => calls.push((
                    data["call_id"].as_str().unwrap().to_owned(),
                    data["state"].as_str().unwrap().to_owned(),
                )),
                "counts" => return (calls, data, id.expect("counts events carry the position")),
                other => panic!("unexpected event {other}"),
            }
        }
    }
}

impl Harness {
    async fn open(&self, name: &str, last_event_id: Option<&str>) -> Result<Stream, (StatusCode, Value)> {
        let mut req = Request::get(format!("/api/v1/campaigns/{name}/events"))
            .header("authorization", format!("Bearer {}", self.key));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = self.app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            return Err((status, serde_json::from_slice(&body).unwrap()));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(Stream { body: response.into_body().into_data_stream(), buf: String::new() })
    }

    async fn call_id(&self, number: &str) -> String {
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM calls WHERE number = $1")
            .bind(number)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        id.to_string()
    }

    async fn set_state(&self, number: &str, state: &str) {
        let id: tocsin_core::CallId = self.call_id(number).await.parse().unwrap();
        calls::stage(&self.db.pool, &[id], state.parse().unwrap()).await.unwrap();
    }
}

#[tokio::test]
async fn stream_resumes_from_last_event_id_without_gaps() {
    let h = harness().await;
    let numbers = ["+14155550101", "+14155550102", "+14155550103", "+14155550104"];
    let body = json!({
        "name": "live-1", "message": "Test.", "from": "+14155550100",
        "contacts": numbers.iter().map(|n| json!({"number": n})).collect::<Vec<_>>(),
    });
    let req = Request::post("/api/v1/campaigns")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.app.clone().oneshot(req).await.unwrap().status(), StatusCode::CREATED);
    let ids: Vec<String> = futures::future::join_all(numbers.iter().map(|n| h.call_id(n))).await;
    let pair = |i: usize, s: &str| (ids[i].clone(), s.to_owned());

    // A fresh stream starts with the counters.
    let mut s = h.open("live-1", None).await.unwrap();
    let (calls, counts, _) = s.batch().await;
    assert!(calls.is_empty());
    assert_eq!((counts["total"].as_i64(), counts["states"]["queued"].as_i64()), (Some(4), Some(4)));

    // A change arrives live.
    h.set_state(numbers[0], "dialing").await;
    let (calls, counts, seen) = s.batch().await;
    assert_eq!(calls, [pair(0, "dialing")]);
    assert_eq!(counts["states"]["dialing"], 1);
    drop(s);

    // While nobody listens: two more changes, and a transaction that took its
    // log id first but commits last.
    let mut slow = h.db.pool.begin().await.unwrap();
    let slow_id: tocsin_core::CallId = h.call_id(numbers[3]).await.parse().unwrap();
    calls::stage(&mut *slow, &[slow_id], CallState::Dialing).await.unwrap();
    h.set_state(numbers[0], "placed").await;
    h.set_state(numbers[1], "dialing").await;

    let mut s = h.open("live-1", Some(&seen)).await.unwrap();
    let (calls, counts, seen) = s.calls(2).await;
    assert_eq!(calls, [pair(0, "placed"), pair(1, "dialing")], "exactly the changes since Last-Event-ID");
    assert_eq!(counts["states"]["dialing"], 1);
    drop(s);

    // The slow transaction commits after the stream's position moved past
    // later log ids: a resumed stream still gets it.
    slow.commit().await.unwrap();
    let mut s = h.open("live-1", Some(&seen)).await.unwrap();
    let (calls, _, _) = s.calls(1).await;
    assert_eq!(calls, [pair(3, "dialing")]);
    // And it stays live after catching up.
    h.set_state(numbers[2], "cancelled").await;
    let (calls, counts, _) = s.calls(1).await;
    assert_eq!(calls, [pair(2, "cancelled")]);
    assert_eq!(counts["finished"], 1);
    drop(s);

    // `0` replays the campaign from the start, in log order (the order each
    // call's state moved; the slow transaction took its log id first).
    let mut s = h.open("live-1", Some("0")).await.unwrap();
    let (calls, _, _) = s.calls(5).await;
    assert_eq!(
        calls,
        [pair(0, "dialing"), pair(3, "dialing"), pair(0, "placed"), pair(1, "dialing"), pair(2, "cancelled")]
    );
    drop(s);

    // Errors keep the standard shape.
    let (status, v) = h.open("live-1", Some("garbage")).await.err().unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    // Well-formed, but not a position this stream ever gave: beyond what
    // PostgreSQL can read, or ahead of the database. It used to open the
    // stream at 200 and send nothing, ever.
    for id in ["9223372036854775808:9223372036854775809:", "99999999999:99999999999:"] {
        let (status, v) = h.open("live-1", Some(id)).await.err().unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("Last-Event-ID"), "{v}");
    }
    let (status, _) = h.open("nope", None).await.err().unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    h.cleanup().await;
}

/// Every `call` event (seq, call id, state) of a stream until `n` have
/// arrived and their batch has ended.
async fn collect(s: &mut Stream, n: usize) -> Vec<(i64, String, String)> {
    let mut got = Vec::new();
    loop {
        let (event, data, _) = s.next().await;
        if event == "counts" && got.len() >= n {
            return got;
        }
        if event == "call" {
            got.push((
                data["seq"].as_i64().unwrap(),
                data["call_id"].as_str().unwrap().to_owned(),
                data["state"].as_str().unwrap().to_owned(),
            ));
        }
    }
}

/// Many streams of one campaign share one reader: each gets every change,
/// in log order, including a stream that joined late from `Last-Event-ID`
/// and one that stopped reading for longer than the shared buffer holds.
#[tokio::test]
async fn many_streams_share_one_reader_and_each_gets_every_change() {
    let h = harness().await;
    let numbers = ["+14155550201", "+14155550202", "+14155550203"];
    let body = json!({
        "name": "live-2", "message": "Test.", "from": "+14155550100",
        "contacts": numbers.iter().map(|n| json!({"number": n})).collect::<Vec<_>>(),
    });
    let req = Request::post("/api/v1/campaigns")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.app.clone().oneshot(req).await.unwrap().status(), StatusCode::CREATED);

    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = h.open("live-2", None).await.unwrap();
        s.batch().await;
        streams.push(s);
    }
    let mut slow = h.open("live-2", None).await.unwrap();
    let (_, _, joined) = slow.batch().await;

    // 150 changes, one transaction each, so the feed sends many batches: more
    // than the 64 it buffers for a stream that does not read.
    const CHANGES: usize = 150;
    let states = ["dialing", "placed"];
    let mut late = None;
    for i in 0..CHANGES {
        h.set_state(numbers[i % 3], states[(i / 3) % 2]).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        if i == CHANGES / 2 {
            late = Some(h.open("live-2", Some(&joined)).await.unwrap());
        }
    }
    let log: Vec<(i64, uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, call_id, state FROM call_state_log ORDER BY id")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    let want: Vec<(i64, String, String)> = log.into_iter().map(|(s, c, st)| (s, c.to_string(), st)).collect();
    assert_eq!(want.len(), CHANGES);
    for (i, s) in streams.iter_mut().enumerate() {
        assert_eq!(collect(s, CHANGES).await, want, "stream {i}");
    }
    assert_eq!(collect(late.as_mut().unwrap(), CHANGES).await, want, "the stream resumed mid-way");
    assert_eq!(collect(&mut slow, CHANGES).await, want, "the stream that fell behind");

    // Still live for all of them after the slow one caught up.
    h.set_state(numbers[0], "completed").await;
    let (calls, counts, _) = slow.batch().await;
    assert_eq!(calls, [(h.call_id(numbers[0]).await, "completed".to_owned())]);
    assert_eq!(counts["finished"], 1);
    let (calls, _, _) = streams[7].batch().await;
    assert_eq!(calls.len(), 1);
    drop(streams);

    h.cleanup().await;
}

/// A graceful shutdown ends open streams instead of waiting for them
/// forever (a dashboard left open must not hold a SIGTERM).
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let h = harness().await;
    let body = json!({"name": "live-3", "message": "Test.", "from": "+14155550100", "contacts": [{"number": "+14155550301"}]});
    let req = Request::post("/api/v1/campaigns")
        .header("authorization", format!("Bearer {}", h.key))
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(h.app.clone().oneshot(req).await.unwrap().status(), StatusCode::CREATED);

    // A second instance of the same service, served on a socket.
    let config = h.config();
    let (listener, addr) = tocsin_core::http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(webhook::run(config, listener, shutdown.clone()));
    let mut response = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/campaigns/live-3/events"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await.unwrap().expect("the first batch");
    assert!(String::from_utf8_lossy(&first).contains("event: counts"));

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while response.chunk().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream was still open 10 s after shutdown began");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the service did not stop within 10 s of shutdown with a stream open")
        .unwrap()
        .unwrap();

    h.cleanup().await;
}
