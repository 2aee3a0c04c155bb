//! The dashboard at `/ui`: a campaigns page (progress bars and outcome
//! breakdown, live) and a campaign page (counters, charts, calls table, a
//! call's timeline, pause / resume / cancel, the CSV export).
//!
//! Server-rendered HTML shells plus one small vanilla script and a style
//! sheet, embedded in the binary (`include_str!`): no build step, no CDN,
//! nothing fetched from outside the service. The pages carry no data and
//! need no key; the script asks for an API key once (kept in the browser's
//! `sessionStorage`, or `localStorage` when asked to remember it), sends it
//! as `Authorization: Bearer` to `/api/v1`, and reads the live stream with
//! `fetch` and a streaming reader — `EventSource` cannot send headers, and
//! a key in a URL would end up in logs. Every `/ui` response carries a
//! Content-Security-Policy that allows only this origin, and no inline
//! script or style.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::middleware::map_response;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");
const ICON: &str = include_str!("favicon.svg");
/// uPlot 1.6.32 (MIT, `vendor/uPlot-LICENSE`), from the npm package's `dist/`:
/// the charts on a campaign's page. Small (51 KB), canvas-drawn and
/// dependency-free, so it is served from here like the rest.
const CHART_SCRIPT: &str = include_str!("vendor/uPlot.iife.min.js");
const CHART_STYLE: &str = include_str!("vendor/uPlot.min.css");

/// Only this origin; no inline code, no framing, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The `/ui` routes, each response with the security headers.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(campaigns))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/campaigns/{name}", get(campaign))
        .route("/ui/new", get(new_broadcast))
        .route("/ui/audit", get(audit))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/ui/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/ui/uplot.js", get(|| async { asset("text/javascript; charset=utf-8", CHART_SCRIPT) }))
        .route("/ui/uplot.css", get(|| async { asset("text/css; charset=utf-8", CHART_STYLE) }))
        .layer(map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn campaigns() -> Html<String> {
    Html(render("campaigns", None))
}

async fn audit() -> Html<String> {
    Html(render("audit", None))
}

async fn new_broadcast() -> Html<String> {
    Html(render("new", None))
}

async fn campaign(Path(name): Path<String>) -> Html<String> {
    Html(render("campaign", Some(&name)))
}

/// The page shell with its kind and campaign name filled in (escaped).
fn render(page: &str, campaign: Option<&str>) -> String {
    let title = match campaign {
        Some(name) => format!("{} — Tocsin", escape(name)),
        None => "Campaigns — Tocsin".to_owned(),
    };
    PAGE.replace("{{title}}", &title)
        .replace("{{page}}", page)
        .replace("{{campaign}}", &escape(campaign.unwrap_or("")))
}

/// HTML-escapes text for element content and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn campaign_names_are_escaped() {
        let page = super::render("campaign", Some("<script>\"x\"&'"));
        assert!(page.contains("&lt;script&gt;&quot;x&quot;&amp;&#39;"));
        assert!(!page.contains("<script>\""));
    }
}
