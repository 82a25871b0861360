//! The API's calls to the identity server over HTTPS: its key set (cached, refreshed on an
//! unknown `kid`). Opaque tokens are not introspected here: the gateway vouches for them.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
use ureq::Agent;

use crate::auth::{self, KeySet, Policy, Principal, Reject};

/// Largest answer read from the identity server.
const MAX_BODY: u64 = 256 * 1024;

/// An HTTPS client that trusts only the given CA file.
pub fn agent(ca_file: &str, timeout: Duration) -> Result<Agent, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read CA file {ca_file}: {e}"))?;
    let certs: Vec<_> = parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("no certificate in CA file {ca_file}"));
    }
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(certs)))
        .build();
    let config = Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build();
    Ok(config.into())
}

fn get_text(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), String> {
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// The identity server's key set, fetched on demand.
pub struct Keys {
    agent: Agent,
    url: String,
    min_refresh: Duration,
    set: RwLock<KeySet>,
    last_fetch: Mutex<Option<Instant>>,
}

impl Keys {
    pub fn new(agent: Agent, url: String, min_refresh: Duration) -> Self {
        Keys {
            agent,
            url,
            min_refresh,
            set: RwLock::new(KeySet::default()),
            last_fetch: Mutex::new(None),
        }
    }

    /// Fetches the key set now; returns how many keys it holds.
    pub fn fetch(&self) -> Result<usize, String> {
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let (status, body) = get_text(self.agent.get(&self.url).call())?;
        if status != 200 {
            return Err(format!("JWKS answered HTTP {status}"));
        }
        let set = auth::parse_jwks(&body)?;
        let n = set.len();
        if n == 0 {
            return Err("JWKS holds no PS256 signing key".into());
        }
        if let Ok(mut current) = self.set.write() {
            *current = set;
        }
        Ok(n)
    }

    /// Refetches unless the last fetch was less than `min_refresh` ago (an unknown `kid` must not
    /// let callers hammer the identity server).
    fn refresh(&self) -> bool {
        let due = self
            .last_fetch
            .lock()
            .map(|last| last.is_none_or(|t| t.elapsed() >= self.min_refresh))
            .unwrap_or(false);
        if !due {
            return false;
        }
        match self.fetch() {
            Ok(n) => {
                eprintln!("api: key set refreshed, {n} key(s)");
                true
            }
            Err(e) => {
                eprintln!("api: key set refresh failed: {e}");
                false
            }
        }
    }

    /// Verifies a JWT, refreshing the key set once if it names an unknown key.
    pub fn verify(&self, token: &str, policy: &Policy, now: u64) -> Result<Principal, Reject> {
        let first = self.with_set(|set| auth::verify_jwt(token, set, policy, now));
        match first {
            Err(Reject::UnknownKey) if self.refresh() => {
                self.with_set(|set| auth::verify_jwt(token, set, policy, now))
            }
            other => other,
        }
        .map_err(|r| match r {
            Reject::UnknownKey => Reject::InvalidToken("signed by an unknown key".into()),
            other => other,
        })
    }

    fn with_set<T>(&self, f: impl FnOnce(&KeySet) -> Result<T, Reject>) -> Result<T, Reject> {
        match self.set.read() {
            Ok(set) => f(&set),
            Err(_) => Err(Reject::InvalidToken("key set unavailable".into())),
        }
    }
}
