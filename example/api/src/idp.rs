//! The API's calls to the identity server over HTTPS: its key set (cached, refreshed on an
//! unknown `kid`) and, for opaque tokens, RFC 7662 introspection.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jwt_simple::reexports::ct_codecs::{Base64, Encoder};
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

/// RFC 7662 introspection of opaque tokens, as the introspecting client (client_secret_basic).
pub struct Introspector {
    pub agent: Agent,
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Introspection could not be done: the request is refused, but it is not the caller's fault.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Introspector {
    pub fn introspect(
        &self,
        token: &str,
        policy: &Policy,
        now: u64,
    ) -> Result<Result<Principal, Reject>, Unavailable> {
        let credentials = format!(
            "{}:{}",
            form_encode(&self.client_id),
            form_encode(&self.client_secret)
        );
        let basic =
            Base64::encode_to_string(credentials).map_err(|e| Unavailable(e.to_string()))?;
        let response = self
            .agent
            .post(&self.url)
            .header("authorization", &format!("Basic {basic}"))
            .header("accept", "application/json")
            .send_form([("token", token), ("token_type_hint", "access_token")]);
        let (status, body) = get_text(response).map_err(Unavailable)?;
        if status != 200 {
            return Err(Unavailable(format!("introspection answered HTTP {status}")));
        }
        Ok(auth::principal_from_introspection(&body, policy, now))
    }
}

/// application/x-www-form-urlencoded, as RFC 6749 2.3.1 asks for client_secret_basic.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_form_encoded() {
        assert_eq!(form_encode("introspect-client"), "introspect-client");
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
