//! The identity server double: token introspection in the three formats of config.md, and a JWKS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

use super::http::{form_field, Reply, Request, Server};
use super::{now, CLIENT_ID, CLIENT_SECRET, ISSUER};

pub const INTROSPECTION_PATH: &str = "/introspect";
pub const JWKS_PATH: &str = "/jwks";
pub const KEY_ID: &str = "certbound-test-key-1";
pub const EVENTS_PATH: &str = "/events";
pub const TOKEN_REVOKED: &str = "https://certbound.example/secevent/token-revoked";

/// `introspection.format` of config.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Jwt,
    IntrospectionJwt,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Json, Format::Jwt, Format::IntrospectionJwt];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Jwt => "jwt",
            Format::IntrospectionJwt => "introspection-jwt",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jwt => "application/jwt",
            Format::IntrospectionJwt => "application/token-introspection+jwt",
        }
    }
}

/// What the server answers for one token.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Active, with these claims (in the server's format).
    Active(Value),
    Inactive,
    /// Sleep, then answer as `Inactive`.
    Hang(Duration),
    /// Sleep, then answer as `Active` with these claims.
    Slow(Duration, Value),
    Status500,
    /// 200 with a body that is neither JSON nor a JWT.
    Garbage,
    /// 200 with a 10 MB body.
    Huge,
    /// Close the connection without answering.
    Reset,
    /// A JWT (same `kid`) signed by a key that is not in the JWKS.
    SignedByOtherKey(Value),
    /// Start an active answer with these claims (headers and part of the body), then reset.
    ResetMidBody(Value),
    /// An active answer with these claims, a byte of the body per `Duration`.
    Trickle(Duration, Value),
    /// 400 with this OAuth `error` (`invalid_request`, `unsupported_token_type`, `invalid_token`).
    Refuse(&'static str),
}

/// A fault of the key set's answers.
#[derive(Clone, Debug)]
pub enum JwksFault {
    /// Headers and part of the key set, then a reset.
    ResetMidBody,
    /// The key set a byte per `Duration`.
    Trickle(Duration),
    /// The whole key set, after this long.
    Slow(Duration),
}

/// `reply`'s answer as a `fault` would send it.
fn faulty(reply: Reply, reset: bool, pause: Duration) -> Reply {
    match reply {
        Reply::Respond {
            status,
            headers,
            body,
        } if reset => Reply::ResetMidBody {
            status,
            headers,
            sent: body.len() / 2,
            body,
        },
        Reply::Respond {
            status,
            headers,
            body,
        } => Reply::Trickle {
            status,
            headers,
            body,
            pause,
        },
        other => other,
    }
}

/// The PS256 key the server signs with and publishes; generated once per test process.
pub fn signing_key() -> &'static PS256KeyPair {
    static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        PS256KeyPair::generate(2048)
            .expect("generate PS256 key")
            .with_key_id(KEY_ID)
    })
}

/// A key that is not in the JWKS but claims the same `kid`.
pub fn other_key() -> &'static PS256KeyPair {
    static KEY: OnceLock<PS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        PS256KeyPair::generate(2048)
            .expect("generate PS256 key")
            .with_key_id(KEY_ID)
    })
}

/// Signs exactly these claims (a JSON object) as a PS256 JWT, optionally with a `typ` header.
pub fn sign(key: &PS256KeyPair, claims: &Value, typ: Option<&str>) -> String {
    let custom: Map<String, Value> = claims
        .as_object()
        .cloned()
        .expect("claims must be a JSON object");
    let claims = JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom,
    };
    let opts = HeaderOptions {
        content_type: None,
        signature_type: typ.map(str::to_string),
    };
    key.sign_with_options(claims, &opts).expect("sign JWT")
}

/// The JWKS document of `signing_key()`.
pub fn jwks_json() -> Value {
    let c = signing_key().public_key().to_components();
    json!({"keys": [{
        "kty": "RSA", "kid": KEY_ID, "alg": "PS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
    }]})
}

/// What the introspection endpoint received (for asserting the filter's request).
#[derive(Debug, Clone)]
pub struct IntrospectionRequest {
    pub token: Option<String>,
    pub request: Request,
}

#[derive(Default)]
struct State {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    /// token → the last body answered with 200 (the JWT for the JWT formats).
    answered: Mutex<HashMap<String, String>>,
    requests: Mutex<Vec<IntrospectionRequest>>,
    calls: AtomicUsize,
    jwks_fetches: AtomicUsize,
    max_age: Mutex<Option<u64>>,
    jwks_fault: Mutex<Option<JwksFault>>,
    /// `tls_client_auth`: the client_id the body must name, with no `Authorization` (the TLS
    /// part, a client certificate on the connection, is the real identity server's to check).
    tls_client: Mutex<Option<String>>,
    /// The revocation feed: the SETs published, in order, and whether the feed answers 500.
    feed: Mutex<Vec<String>>,
    feed_down: std::sync::atomic::AtomicBool,
    feed_polls: AtomicUsize,
}

pub struct Introspection {
    server: Server,
    format: Format,
    state: Arc<State>,
}

impl Introspection {
    pub fn start(format: Format) -> Introspection {
        // Generate the keys before Envoy exists: done inside a request, key generation could
        // outlast the filter's introspection timeout.
        let _ = signing_key();
        let _ = other_key();
        let state: Arc<State> = Arc::default();
        let handler_state = state.clone();
        let server = Server::start(Arc::new(move |req: &Request| {
            handle(format, &handler_state, req)
        }));
        Introspection {
            server,
            format,
            state,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn register(&self, token: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(token.to_string(), behaviour);
    }

    /// Adds `Cache-Control: max-age=N` to 200 answers.
    /// Makes every key set answer fail this way (`None`: answer normally again).
    pub fn fail_jwks(&self, fault: Option<JwksFault>) {
        *self.state.jwks_fault.lock().unwrap() = fault;
    }

    /// From now on, authenticate the introspecting client as `tls_client_auth` would: `client_id`
    /// in the body and no `Authorization`.
    pub fn expect_tls_client_auth(&self, client_id: &str) {
        *self.state.tls_client.lock().unwrap() = Some(client_id.to_string());
    }

    pub fn set_max_age(&self, max_age: Option<u64>) {
        *self.state.max_age.lock().unwrap() = max_age;
    }

    /// Adds a SET to the revocation feed (`EVENTS_PATH`).
    pub fn publish(&self, set: String) {
        self.state.feed.lock().unwrap().push(set);
    }

    /// Makes the feed answer 500 (`true`) or answer again (`false`).
    pub fn feed_down(&self, down: bool) {
        self.state.feed_down.store(down, Ordering::SeqCst);
    }

    pub fn feed_polls(&self) -> usize {
        self.state.feed_polls.load(Ordering::SeqCst)
    }

    /// POSTs received at the introspection path (any credentials).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<IntrospectionRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last 200 body answered for `token` (the JWT, for the JWT formats).
    pub fn answered(&self, token: &str) -> Option<String> {
        self.state.answered.lock().unwrap().get(token).cloned()
    }
}

fn handle(format: Format, state: &State, req: &Request) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default();
    if path == JWKS_PATH && req.method == "GET" {
        state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let reply = with_max_age(
            state,
            Reply::new(200, "application/json", jwks_json().to_string()),
        );
        return match state.jwks_fault.lock().unwrap().clone() {
            None => reply,
            Some(JwksFault::ResetMidBody) => faulty(reply, true, Duration::ZERO),
            Some(JwksFault::Trickle(pause)) => faulty(reply, false, pause),
            Some(JwksFault::Slow(delay)) => {
                thread::sleep(delay);
                reply
            }
        };
    }
    if path == EVENTS_PATH && req.method == "GET" {
        return feed(state, req);
    }
    if path != INTROSPECTION_PATH {
        return Reply::new(404, "text/plain", "not found");
    }
    if req.method != "POST" {
        return Reply::new(405, "text/plain", "POST only");
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    let token = form_field(&req.body, "token");
    state.requests.lock().unwrap().push(IntrospectionRequest {
        token: token.clone(),
        request: req.clone(),
    });

    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let authenticated = match state.tls_client.lock().unwrap().as_deref() {
        Some(client) => {
            req.header("authorization").is_none()
                && form_field(&req.body, "client_id").as_deref() == Some(client)
        }
        None => req.header("authorization") == Some(expected.as_str()),
    };
    if !authenticated {
        return Reply::new(401, "application/json", r#"{"error":"invalid_client"}"#)
            .with_header("www-authenticate", "Basic realm=\"introspection\"");
    }
    let form = req.header("content-type").is_some_and(|v| {
        v.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let Some(token) = token.filter(|_| form) else {
        return Reply::new(400, "application/json", r#"{"error":"invalid_request"}"#);
    };

    let behaviour = state
        .behaviours
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or(Behaviour::Inactive);
    let reply = match behaviour {
        Behaviour::Active(claims) => active(format, signing_key(), &claims),
        // In the JSON format a signed answer is simply not JSON.
        Behaviour::SignedByOtherKey(claims) if format == Format::Json => {
            Reply::new(200, format.content_type(), sign(other_key(), &claims, None))
        }
        Behaviour::SignedByOtherKey(claims) => active(format, other_key(), &claims),
        Behaviour::Inactive => inactive(format),
        Behaviour::Hang(d) => {
            thread::sleep(d);
            inactive(format)
        }
        Behaviour::Slow(d, claims) => {
            thread::sleep(d);
            active(format, signing_key(), &claims)
        }
        Behaviour::Status500 => Reply::new(500, "application/json", r#"{"error":"server_error"}"#),
        Behaviour::Garbage => Reply::new(
            200,
            format.content_type(),
            "<html>this is not a token</html>",
        ),
        Behaviour::Huge => Reply::new(200, format.content_type(), vec![b'a'; 10 * 1024 * 1024]),
        Behaviour::Reset => Reply::Close,
        Behaviour::ResetMidBody(claims) => {
            faulty(active(format, signing_key(), &claims), true, Duration::ZERO)
        }
        Behaviour::Trickle(pause, claims) => {
            faulty(active(format, signing_key(), &claims), false, pause)
        }
        Behaviour::Refuse(error) => {
            Reply::new(400, "application/json", format!(r#"{{"error":"{error}"}}"#))
        }
    };
    if let Reply::Respond {
        status: 200, body, ..
    } = &reply
    {
        state
            .answered
            .lock()
            .unwrap()
            .insert(token, String::from_utf8_lossy(body).into_owned());
    }
    with_max_age(state, reply)
}

/// The revocation feed as docs/config.md describes it: the SETs after the cursor `n.<count>`.
fn feed(state: &State, req: &Request) -> Reply {
    state.feed_polls.fetch_add(1, Ordering::SeqCst);
    if state.feed_down.load(Ordering::SeqCst) {
        return Reply::new(500, "text/plain", "down");
    }
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let after = param("after")
        .and_then(|c| c.strip_prefix("n.")?.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let sets = state.feed.lock().unwrap().clone();
    let page: Vec<String> = sets.iter().skip(after).take(limit).cloned().collect();
    let next = format!("n.{}", after.min(sets.len()) + page.len());
    let body = json!({"events": page, "next": next});
    Reply::new(200, "application/json", body.to_string())
}

/// A revocation event (RFC 8417 SET) naming `token`, signed by `key`.
pub fn revocation_set(key: &PS256KeyPair, token: &str) -> String {
    use sha2::Digest;
    let hash = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(token.as_bytes()));
    let claims = json!({
        "iss": super::ISSUER, "aud": super::CLIENT_ID, "iat": super::now(), "jti": hash,
        "events": { TOKEN_REVOKED: { "token_hash": &hash[..32], "retain_until": super::now() + 3600 } }
    });
    sign(key, &claims, Some("secevent+jwt"))
}

fn with_max_age(state: &State, reply: Reply) -> Reply {
    match (*state.max_age.lock().unwrap(), &reply) {
        (Some(n), Reply::Respond { status: 200, .. }) => {
            reply.with_header("cache-control", &format!("max-age={n}"))
        }
        _ => reply,
    }
}

fn active(format: Format, key: &PS256KeyPair, claims: &Value) -> Reply {
    match format {
        Format::Json => {
            let mut body = json!({"active": true});
            merge(&mut body, claims);
            Reply::new(200, format.content_type(), body.to_string())
        }
        Format::Jwt => Reply::new(200, format.content_type(), sign(key, claims, None)),
        Format::IntrospectionJwt => {
            let mut inner = json!({"active": true});
            merge(&mut inner, claims);
            Reply::new(200, format.content_type(), introspection_jwt(key, inner))
        }
    }
}

fn inactive(format: Format) -> Reply {
    match format {
        Format::Json => Reply::new(200, format.content_type(), r#"{"active":false}"#),
        Format::Jwt => Reply::empty(204),
        Format::IntrospectionJwt => Reply::new(
            200,
            format.content_type(),
            introspection_jwt(signing_key(), json!({"active": false})),
        ),
    }
}

/// RFC 9701 response: the introspection result inside a signed JWT addressed to the client.
fn introspection_jwt(key: &PS256KeyPair, token_introspection: Value) -> String {
    let claims = json!({
        "iss": ISSUER,
        "aud": CLIENT_ID,
        "iat": now(),
        "token_introspection": token_introspection,
    });
    sign(key, &claims, Some("token-introspection+jwt"))
}

fn merge(target: &mut Value, claims: &Value) {
    if let (Some(t), Some(c)) = (target.as_object_mut(), claims.as_object()) {
        for (k, v) in c {
            t.insert(k.clone(), v.clone());
        }
    }
}
