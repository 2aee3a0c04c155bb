//! The global rate limiter against the real Redis: exact spacing under
//! contention, refusals past the maximum wait, the shared cool-down, and the
//! local fallback while Redis is unreachable (cut by a TCP proxy we control).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tocsin_core::limiter::{Admission, Limiter, RedisLimiter, Reservation};
use tocsin_core::testing;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn limiter(url: &str, rate: f64, max_wait: Duration) -> RedisLimiter {
    let conn = RedisLimiter::connect(url).await.unwrap();
    RedisLimiter::new(conn, &testing::unique_prefix("rl"), rate, max_wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_get_distinct_evenly_spaced_slots() {
    let url = testing::redis_url().await;
    let rl = Arc::new(limiter(&url, 20.0, Duration::from_secs(10)).await);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move { rl.reserve("acct").await.unwrap() }));
    }
    let mut waits = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Reservation::Granted(w) => waits.push(w),
            Reservation::Refused(w) => panic!("refused after {w:?}"),
        }
    }
    waits.sort();
    // 40 callers at 20/s: slots 50 ms apart, the last about 1.95 s out.
    // The tasks arrive over a few ms, so each gap is 50 ms minus the time
    // between two callers' arrivals (well under 10 ms here).
    for pair in waits.windows(2) {
        let gap = pair[1].saturating_sub(pair[0]);
        assert!(
            gap >= Duration::from_millis(40) && gap <= Duration::from_millis(60),
            "gap {gap:?} in {waits:?}"
        );
    }
    assert!(waits[39] >= Duration::from_millis(1850), "{waits:?}");
}

/// The most of `times` (seconds, sorted) inside any half-open 1-second window.
fn busiest_second(times: &[f64]) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while times[start] <= t - 1.0 {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

/// Callers that wake up to 80 ms late for their slots (a loaded machine)
/// and send at once would put `limit + 1` and more into a rolling second;
/// admitted through the guard, they never do, and the rate still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_wakers_are_admitted_so_that_no_rolling_second_exceeds_the_limit() {
    let url = testing::redis_url().await;
    let conn = RedisLimiter::connect(&url).await.unwrap();
    let prefix = testing::unique_prefix("rl");
    let rate = 20.0;
    let guard = Duration::from_millis(30);
    let rl = Arc::new(RedisLimiter::with_guard(conn, &prefix, rate, Duration::from_secs(30), guard));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..80u64 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move {
            let Reservation::Granted(wait) = rl.reserve("acct").await.unwrap() else { panic!("refused") };
            // Every third caller wakes late, by up to 80 ms.
            let late = Duration::from_millis(if i % 3 == 0 { (i * 37) % 80 } else { 0 });
            tokio::time::sleep(wait + late).await;
            let unguarded = started.elapsed().as_secs_f64();
            loop {
                match rl.admit("acct").await.unwrap() {
                    Admission::Go => break,
                    Admission::Wait(w) => tokio::time::sleep(w).await,
                }
            }
            (unguarded, started.elapsed().as_secs_f64())
        }));
    }
    let mut unguarded = Vec::new();
    let mut sent = Vec::new();
    for t in tasks {
        let (u, s) = t.await.unwrap();
        unguarded.push(u);
        sent.push(s);
    }
    unguarded.sort_by(f64::total_cmp);
    sent.sort_by(f64::total_cmp);
    assert!(busiest_second(&sent) <= rate as usize, "busiest second {} of {sent:?}", busiest_second(&sent));
    let achieved = (sent.len() - 1) as f64 / (sent[sent.len() - 1] - sent[0]);
    assert!(achieved >= 0.95 * rate, "achieved {achieved:.2}/s");
    // Without the admission the same wake-ups bunch past the limit.
    assert!(busiest_second(&unguarded) > rate as usize, "the late wake-ups did not bunch: {unguarded:?}");
}

#[tokio::test]
async fn reservations_past_the_maximum_wait_are_refused_and_reserve_nothing() {
    let url = testing::redis_url().await;
    let rl = limiter(&url, 2.0, Duration::from_millis(1200)).await;
    let mut granted = 0;
    let mut refused = 0;
    for _ in 0..6 {
        match rl.reserve("acct").await.unwrap() {
            Reservation::Granted(_) => granted += 1,
            Reservation::Refused(w) => {
                assert!(w > Duration::from_millis(1200));
                refused += 1;
            }
        }
    }
    // Slots at 0, 0.5, 1.0 s fit in 1.2 s; the rest are refused without
    // pushing the timeline further (a refusal reserves nothing).
    assert_eq!((granted, refused), (3, 3));
}

#[tokio::test]
async fn a_cool_down_delays_every_later_slot_and_accounts_are_independent() {
    let url = testing::redis_url().await;
    let rl = limiter(&url, 100.0, Duration::from_secs(10)).await;
    rl.cool_down("a", Duration::from_secs(2)).await.unwrap();
    let Reservation::Granted(wait) = rl.reserve("a").await.unwrap() else { panic!() };
    assert!(wait >= Duration::from_millis(1900), "{wait:?}");
    let Reservation::Granted(other) = rl.reserve("b").await.unwrap() else { panic!() };
    assert!(other < Duration::from_millis(100), "{other:?}");
}

/// A TCP proxy to Redis that can be cut and restored on the same port.
struct Proxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(upstream).await.unwrap();
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self { addr, stop }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_unreachable_a_local_limiter_takes_over_then_redis_again() {
    let url = testing::redis_url().await;
    let upstream: SocketAddr =
        url.trim_start_matches("redis://").parse().unwrap_or("127.0.0.1:6379".parse().unwrap());
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream).await;
    let addr = proxy.addr;
    let redis = limiter(&format!("redis://{addr}"), 10.0, Duration::from_secs(5)).await;
    // Two workers expected: each allows 5/s locally.
    let limiter = Limiter::new(redis, 10.0, 2, Duration::from_secs(5));
    assert!(matches!(limiter.reserve("acct").await, Reservation::Granted(_)));
    assert!(!limiter.fallback_active());

    proxy.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        let Reservation::Granted(wait) = limiter.reserve("acct").await else { panic!("refused") };
        tokio::time::sleep(wait).await;
    }
    assert!(limiter.fallback_active());
    // Local pace is 5/s: six slots take at least one second after the first.
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());

    // Redis comes back on the same address; after the retry interval the
    // shared limiter is used again.
    let _proxy = Proxy::start(addr, upstream).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut back = false;
    for _ in 0..20 {
        limiter.reserve("acct").await;
        if !limiter.fallback_active() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "never returned to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_fallback_shares_the_rate_among_the_workers_really_running() {
    let url = testing::redis_url().await;
    let upstream: SocketAddr =
        url.trim_start_matches("redis://").parse().unwrap_or("127.0.0.1:6379".parse().unwrap());
    let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream).await;
    let redis = limiter(&format!("redis://{}", proxy.addr), 10.0, Duration::from_secs(5)).await;
    // Configured for one worker, but the broker counts four consumers: each
    // may send 2.5/s while Redis is down, not the whole 10/s (four workers
    // at 10/s each is how a 20 s outage drew 66 × 429 at the provider).
    let limiter = Limiter::new(redis, 10.0, 1, Duration::from_secs(5));
    limiter.set_workers_running(4);
    assert!((limiter.local_rate() - 2.5).abs() < 1e-9);
    proxy.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        let Reservation::Granted(wait) = limiter.reserve("acct").await else { panic!("refused") };
        tokio::time::sleep(wait).await;
    }
    assert!(limiter.fallback_active());
    // Four slots at 2.5/s: at least 1.2 s after the first.
    assert!(started.elapsed() >= Duration::from_millis(1150), "{:?}", started.elapsed());
    // Fewer running than configured: the configured count still holds.
    limiter.set_workers_running(0);
    assert!((limiter.local_rate() - 10.0).abs() < 1e-9);
}
