//! API key authentication and authorisation: the key from
//! `Authorization: Bearer …`, looked up by its key id, compared by SHA-256 in
//! constant time (`tocsin_core::apikey::verify`), then checked for the scope
//! and the campaign-name prefixes the route needs.
//!
//! A handler states the scope it needs in its signature: an argument
//! `caller: Auth<Read>` (or `Auth<Write>`, `Auth<Control>`) authenticates
//! the request before the handler runs and answers 401 or 403 itself.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sqlx::PgPool;
use tocsin_core::http::ApiError;

use super::{ApiState, Error, forbidden};

/// A scope a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Write,
    Read,
    Control,
    Audit,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Write => "campaigns:write",
            Self::Read => "campaigns:read",
            Self::Control => "campaigns:control",
            Self::Audit => "audit:read",
        }
    }
}

/// A scope as a type, for `Auth<S>`.
pub trait RequiredScope {
    const SCOPE: Scope;
}

/// `campaigns:write`: create campaigns, post Alertmanager notifications.
pub struct Write;
/// `campaigns:read`: list and watch campaigns and their calls.
pub struct Read;
/// `campaigns:control`: pause, resume, cancel.
pub struct Control;

impl RequiredScope for Write {
    const SCOPE: Scope = Scope::Write;
}
impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Control {
    const SCOPE: Scope = Scope::Control;
}
/// `audit:read`: read the audit log.
pub struct AuditRead;
impl RequiredScope for AuditRead {
    const SCOPE: Scope = Scope::Audit;
}

/// The extractor of an authenticated caller holding scope `S`; derefs to
/// the `Caller`.
pub struct Auth<S> {
    pub caller: Caller,
    scope: PhantomData<S>,
}

impl<S> Deref for Auth<S> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<S: RequiredScope> FromRequestParts<Arc<ApiState>> for Auth<S> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Error> {
        let mut caller = authenticate(&state.pool, &parts.headers, S::SCOPE).await?;
        // The audit log's "from where": the peer, or the client a trusted proxy names.
        let peer =
            parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        caller.client =
            peer.map(|peer| client_address(peer, &parts.headers, &state.trusted_proxies).to_string());
        Ok(Self { caller, scope: PhantomData })
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: String,
    pub name: String,
    pub campaign_prefixes: Vec<String>,
    /// The client's address, when the server knows it.
    pub client: Option<String>,
}

impl Caller {
    /// Whether this key may touch campaign `name`.
    pub fn may_touch(&self, name: &str) -> bool {
        self.campaign_prefixes.is_empty()
            || self.campaign_prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// 403 unless this key may touch campaign `name`.
    pub fn check_campaign(&self, name: &str) -> Result<(), ApiError> {
        if self.may_touch(name) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this API key may only use campaigns whose name starts with {}",
                self.campaign_prefixes.join(" or ")
            )))
        }
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    name: String,
    hash: Vec<u8>,
    scopes: Vec<String>,
    campaign_prefixes: Vec<String>,
    revoked: bool,
    stale_last_used: bool,
}

/// The caller, if the request's key is valid and holds `scope`.
async fn authenticate(pool: &PgPool, headers: &HeaderMap, scope: Scope) -> Result<Caller, Error> {
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing API key: send Authorization: Bearer <key>"))?;
    let unknown = || ApiError::unauthorized("unknown or revoked API key");
    let Some(key_id) = tocsin_core::apikey::key_id(key) else {
        return Err(unknown().into());
    };
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT name, hash, scopes, campaign_prefixes, revoked_at IS NOT NULL AS revoked, \
                (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') AS stale_last_used \
         FROM api_keys WHERE key_id = $1",
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    // Hash even when the id is unknown, so timing says nothing about which ids exist.
    let (stored, row) = match row {
        Some(r) => (r.hash.clone(), Some(r)),
        None => (vec![0u8; 32], None),
    };
    let matches = tocsin_core::apikey::verify(&stored, key);
    let Some(row) = row.filter(|r| matches && !r.revoked) else {
        return Err(unknown().into());
    };
    if !row.scopes.iter().any(|s| s == scope.as_str()) {
        return Err(forbidden(format!("this API key lacks the scope {}", scope.as_str())).into());
    }
    if row.stale_last_used {
        // Best effort, at most once a minute per key: a failure here must not fail the request.
        let _ = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE key_id = $1")
            .bind(key_id)
            .execute(pool)
            .await;
    }
    Ok(Caller {
        key_id: key_id.to_owned(),
        name: row.name,
        campaign_prefixes: row.campaign_prefixes,
        client: None,
    })
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy;
/// then the right-most `X-Forwarded-For` address that is not a trusted proxy
/// (those to its left were written by the client and prove nothing). A
/// malformed header leaves the last trusted hop.
pub fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if !is_trusted(&peer) {
        return client;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::client_address;
    use axum::http::HeaderMap;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let proxy = "10.1.2.3".parse().unwrap();
        let outsider = "203.0.113.9".parse().unwrap();
        // Direct from a client: the header is the client's own claim.
        assert_eq!(client_address(outsider, &headers(&["198.51.100.1"]), &trusted), outsider);
        // Through the proxy: the right-most untrusted hop, whatever the client wrote before it.
        let h = headers(&["1.1.1.1, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(client_address(proxy, &h, &trusted).to_string(), "198.51.100.7");
        // No header, or garbage: the proxy (or the last trusted hop) is all we know.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(client_address(proxy, &headers(&["not-an-ip"]), &trusted), proxy);
        // No trusted proxies configured: the peer, always.
        assert_eq!(client_address(proxy, &headers(&["198.51.100.7"]), &[]), proxy);
        // IPv6 clients read too.
        assert_eq!(client_address(proxy, &headers(&["2001:db8::1"]), &trusted).to_string(), "2001:db8::1");
    }
}
