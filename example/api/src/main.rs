//! The example API certbound protects: `POST /api/transactions` and `GET /api/transactions`.
//!
//! It serves HTTPS to the gateway only (mutual TLS, `tls`): partners cannot reach it past the
//! gateway. Behind that, it trusts nothing in the request but what it can check (`auth`): the token
//! in `Authorization`, verified itself, and bound to the certificate whose hash the gateway forwards.
//! Configuration is read from the environment (`--help` lists it).

mod auth;
mod idp;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use auth::{Policy, Principal, Reject, TokenKind};
use idp::Keys;

const HELP: &str = "certbound example API. Environment:
  API_HOST (127.0.0.1), API_PORT (8080)           where it serves HTTPS, to the gateway only
  API_CERT_FILE (certs/out/example.tls.pem), API_KEY_FILE (certs/out/example.tls.key)
  API_CLIENT_CA_FILE (certs/out/trust.pem)        the CAs the gateway's client certificate chains to
  API_GATEWAY_SUBJECT (CN=certbound-gateway,O=Example Bank)
                                                  the one client certificate subject accepted (RFC 4514)
  API_ADMIN_PORT (unset)                          if set, GET /stats on http://127.0.0.1:PORT (request counters)
  API_ISSUER (https://login.example.com:8443/oauth/v2/oauth-anonymous)
  API_AUDIENCE (api.example.com)                  aud of accepted at+jwt access tokens
  API_INTROSPECTION_JWT_AUDIENCE (introspect-client)
                                                  aud of accepted RFC 9701 responses (empty: none accepted)
  API_JWKS_URL (https://127.0.0.1:8444/oauth/v2/oauth-anonymous/jwks)
  API_CA_FILE (certs/out/root.pem)                the only CA trusted for the identity server
  API_CLOCK_SKEW_SECONDS (60), API_JWKS_STARTUP_SECONDS (30), API_THREADS (4)
Every token must be bound to the partner's certificate: its cnf.x5t#S256 must be the Hash the gateway
forwards in x-forwarded-client-cert. Opaque tokens are accepted on the gateway's word only (its
x-certbound-client-id, x-certbound-scope and x-certbound-cnf headers); the API never introspects.";

const MAX_REQUEST_BODY: usize = 64 * 1024;
const REALM: &str = "api";
/// The gateway's claim headers for an opaque token (`claim_headers` of the `json` format).
const GATEWAY_CLIENT_ID: &str = "x-certbound-client-id";
const GATEWAY_SCOPE: &str = "x-certbound-scope";
const GATEWAY_CNF: &str = "x-certbound-cnf";
/// A TLS handshake or a request's headers that take longer are dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Config {
    listen: String,
    admin_listen: Option<String>,
    policy: Policy,
    tls: tls::Settings,
    jwks_url: String,
    ca_file: String,
    jwks_startup: Duration,
    threads: usize,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn env_opt(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match env_opt(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name} must be a number (got {v:?})")),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let host = env_or("API_HOST", "127.0.0.1");
        let port: u16 = env_num("API_PORT", 8080)?;
        let admin_port: Option<u16> = match env_opt("API_ADMIN_PORT") {
            None => None,
            Some(_) => Some(env_num("API_ADMIN_PORT", 0)?),
        };
        let ca_file = env_or("API_CA_FILE", "certs/out/root.pem");
        // The other files default to the same directory as the CA file.
        let beside_ca = |name: &str| {
            std::path::Path::new(&ca_file)
                .with_file_name(name)
                .to_string_lossy()
                .into_owned()
        };
        let introspection_audience = match std::env::var("API_INTROSPECTION_JWT_AUDIENCE") {
            Ok(v) if v.is_empty() => None,
            Ok(v) => Some(v),
            Err(_) => Some("introspect-client".to_string()),
        };
        Ok(Config {
            listen: format!("{host}:{port}"),
            admin_listen: admin_port.map(|p| format!("127.0.0.1:{p}")),
            policy: Policy {
                issuer: env_or(
                    "API_ISSUER",
                    "https://login.example.com:8443/oauth/v2/oauth-anonymous",
                ),
                audience: env_or("API_AUDIENCE", "api.example.com"),
                introspection_audience,
                clock_skew_seconds: env_num("API_CLOCK_SKEW_SECONDS", 60)?,
            },
            tls: tls::Settings {
                cert_file: env_or("API_CERT_FILE", &beside_ca("example.tls.pem")),
                key_file: env_or("API_KEY_FILE", &beside_ca("example.tls.key")),
                client_ca_file: env_or("API_CLIENT_CA_FILE", &beside_ca("trust.pem")),
                gateway_subject: env_or(
                    "API_GATEWAY_SUBJECT",
                    "CN=certbound-gateway,O=Example Bank",
                ),
            },
            jwks_url: env_or(
                "API_JWKS_URL",
                "https://127.0.0.1:8444/oauth/v2/oauth-anonymous/jwks",
            ),
            ca_file,
            jwks_startup: Duration::from_secs(env_num("API_JWKS_STARTUP_SECONDS", 30)?),
            threads: env_num("API_THREADS", 4usize)?.max(1),
        })
    }
}

/// Counters for the tests: every request that reached the API, and what became of it.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    rejected: AtomicU64,
    accepted_at_jwt: AtomicU64,
    accepted_introspection_jwt: AtomicU64,
    accepted_opaque: AtomicU64,
}

impl Stats {
    fn json(&self, transactions: usize) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        json!({
            "requests": get(&self.requests),
            "rejected": get(&self.rejected),
            "accepted": {
                "at+jwt": get(&self.accepted_at_jwt),
                "token-introspection+jwt": get(&self.accepted_introspection_jwt),
                "opaque": get(&self.accepted_opaque),
            },
            "transactions": transactions,
        })
    }
}

#[derive(Clone, Serialize)]
struct Transaction {
    id: String,
    amount: Value,
    client_id: String,
    created_at: u64,
}

struct App {
    policy: Policy,
    keys: Keys,
    stats: Stats,
    transactions: Mutex<Vec<Transaction>>,
    next_id: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A reply: status, JSON body, extra headers.
struct Reply {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn unauthorized(error: Option<&str>, description: &str) -> Reply {
        let challenge = match error {
            None => format!("Bearer realm=\"{REALM}\""),
            Some(e) => format!(
                "Bearer realm=\"{REALM}\", error=\"{e}\", error_description=\"{description}\""
            ),
        };
        // Every refusal of the credentials is 401, a malformed header too: one answer for "no
        // valid token here".
        Reply {
            status: 401,
            body: json!({ "error": error.unwrap_or("unauthorized"), "error_description": description }),
            headers: vec![("www-authenticate", challenge)],
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body.to_string())));
        *response.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

/// Every value of a header, as text; a value that is not visible ASCII makes the header unreadable.
fn values<'a>(headers: &'a HeaderMap, name: &str) -> Result<Vec<&'a str>, Reply> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .map_err(|_| Reply::unauthorized(Some("invalid_request"), "unreadable header"))
}

impl App {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Reply> {
        let token =
            auth::bearer_token(&values(headers, "authorization")?).map_err(|r| match r {
                Reject::InvalidRequest(why) => Reply::unauthorized(Some("invalid_request"), why),
                _ => Reply::unauthorized(None, "a bearer token is required"),
            })?;
        let verdict = if auth::is_jwt(token) {
            self.keys.verify(token, &self.policy, now())
        } else {
            auth::principal_from_gateway(
                &values(headers, GATEWAY_CLIENT_ID)?,
                &values(headers, GATEWAY_SCOPE)?,
                &values(headers, GATEWAY_CNF)?,
            )
        };
        let forwarded = values(headers, "x-forwarded-client-cert")?;
        verdict
            .and_then(|principal| {
                let hash = auth::forwarded_certificate_hash(&forwarded)?;
                auth::check_binding(&principal, &hash)?;
                Ok(principal)
            })
            .map_err(|r| {
                let why = match r {
                    Reject::InvalidToken(why) => why,
                    other => format!("{other:?}"),
                };
                eprintln!("api: token refused: {why}");
                Reply::unauthorized(Some("invalid_token"), "the access token is invalid")
            })
    }

    /// `body` is `None` when it could not be read or was larger than `MAX_REQUEST_BODY`.
    fn handle(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> (Reply, Option<Principal>) {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        let principal = match self.authenticate(headers) {
            Ok(p) => p,
            Err(reply) => {
                self.stats.rejected.fetch_add(1, Ordering::SeqCst);
                return (reply, None);
            }
        };
        let counter = match principal.kind {
            TokenKind::AccessTokenJwt => &self.stats.accepted_at_jwt,
            TokenKind::IntrospectionJwt => &self.stats.accepted_introspection_jwt,
            TokenKind::Opaque => &self.stats.accepted_opaque,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let reply = match (method, path) {
            (&Method::POST, "/api/transactions") => self.create(body, &principal),
            (&Method::GET, "/api/transactions") => self.list(&principal),
            (_, "/api/transactions") => Reply::json(405, json!({ "error": "method_not_allowed" })),
            _ => Reply::json(404, json!({ "error": "not_found" })),
        };
        (reply, Some(principal))
    }

    fn create(&self, body: Option<&[u8]>, principal: &Principal) -> Reply {
        if !principal.has_scope("transactions") {
            return Reply {
                status: 403,
                body: json!({ "error": "insufficient_scope" }),
                headers: vec![(
                    "www-authenticate",
                    format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"transactions\""),
                )],
            };
        }
        let Some(body) = body else {
            return Reply::json(
                400,
                json!({ "error": "invalid_request", "error_description": "unreadable or too large body" }),
            );
        };
        // The reference system's client posts `Content-Type: application/json` with no body:
        // that is a transaction without an amount.
        let amount = match serde_json::from_slice::<Value>(body) {
            _ if body.iter().all(u8::is_ascii_whitespace) => Some(Value::Null),
            Ok(Value::Object(mut fields)) => fields.remove("amount"),
            _ => None,
        };
        let Some(amount) = amount.filter(|a| a.is_number() || a.is_string() || a.is_null()) else {
            return Reply::json(
                400,
                json!({ "error": "invalid_request", "error_description": "a JSON object with an amount is required" }),
            );
        };
        let n = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let tx = Transaction {
            id: format!("tx-{n}"),
            amount,
            client_id: principal.client_id.clone(),
            created_at: now(),
        };
        let body = serde_json::to_value(&tx).unwrap_or(Value::Null);
        if let Ok(mut all) = self.transactions.lock() {
            all.push(tx);
        }
        Reply::json(201, body)
    }

    fn list(&self, principal: &Principal) -> Reply {
        let mine: Vec<Transaction> = self
            .transactions
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|t| t.client_id == principal.client_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Reply::json(200, serde_json::to_value(mine).unwrap_or(Value::Null))
    }

    fn transaction_count(&self) -> usize {
        self.transactions.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// One request of the gateway: the body is read (at most `MAX_REQUEST_BODY`), then handled on a
/// blocking thread (verifying may fetch the key set).
async fn serve(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .ok()
        .map(|b| b.to_bytes());
    let handled = tokio::task::spawn_blocking(move || {
        let path = parts.uri.path().to_string();
        let (reply, principal) = app.handle(&parts.method, &path, &parts.headers, body.as_deref());
        // One line per request: never the token, only who it was and what happened.
        let who = principal
            .map(|p| format!("client_id={} token={}", p.client_id, p.kind.name()))
            .unwrap_or_else(|| "unauthenticated".into());
        eprintln!("api: {} {path:?} {} {who}", parts.method, reply.status);
        reply
    })
    .await;
    let reply = handled.unwrap_or_else(|_| Reply::json(500, json!({ "error": "server_error" })));
    Ok(reply.into_response())
}

async fn serve_admin(
    app: Arc<App>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match (request.method(), request.uri().path()) {
        (&Method::GET, "/stats") => Reply::json(200, app.stats.json(app.transaction_count())),
        _ => Reply::json(404, json!({ "error": "not_found" })),
    };
    Ok(reply.into_response())
}

fn http1() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_headers(100);
    builder
}

/// HTTPS for the gateway: every connection is a mutual-TLS handshake first (`tls`).
async fn listen_tls(app: Arc<App>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("api: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, acceptor) = (Arc::clone(&app), acceptor.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return eprintln!("api: TLS handshake with {peer} refused: {e}"),
                Err(_) => return eprintln!("api: TLS handshake with {peer} timed out"),
            };
            let service = service_fn(move |r| serve(Arc::clone(&app), r));
            let _ = http1().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

/// Plain HTTP on loopback for the tests' counters.
async fn listen_admin(app: Arc<App>, listener: TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |r| serve_admin(Arc::clone(&app), r));
            let _ = http1().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

async fn bind(addr: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn run() -> Result<(), String> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    if let Some(arg) = std::env::args().nth(1) {
        return Err(format!(
            "unknown argument {arg:?} (configuration is read from the environment, see --help)"
        ));
    }
    let config = Config::from_env()?;
    let acceptor = TlsAcceptor::from(tls::server_config(&config.tls)?);
    let agent = idp::agent(&config.ca_file, Duration::from_secs(5))?;
    let keys = Keys::new(agent, config.jwks_url.clone(), Duration::from_secs(5));

    let app = Arc::new(App {
        policy: config.policy.clone(),
        keys,
        stats: Stats::default(),
        transactions: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
    });
    // The key set in the background, with retries: the identity server may still be starting. The
    // API serves meanwhile; a token that needs the keys fetches them on demand (`Keys::verify`).
    let startup = Arc::clone(&app);
    let (jwks_url, jwks_startup) = (config.jwks_url.clone(), config.jwks_startup);
    thread::spawn(move || {
        let deadline = std::time::Instant::now() + jwks_startup;
        loop {
            match startup.keys.fetch() {
                Ok(n) => return eprintln!("api: {n} signing key(s) from {jwks_url}"),
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("api: key set not available yet ({e}); retrying");
                    thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    return eprintln!("api: key set not available ({e}); will fetch it on demand")
                }
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = bind(&config.listen).await?;
        if let Some(admin) = &config.admin_listen {
            tokio::spawn(listen_admin(Arc::clone(&app), bind(admin).await?));
            eprintln!("api: stats on http://{admin}/stats");
        }
        eprintln!(
            "api: listening on https://{} for {:?} only (issuer {}, audience {})",
            config.listen, config.tls.gateway_subject, config.policy.issuer, config.policy.audience,
        );
        listen_tls(app, listener, acceptor).await;
        Ok(())
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api: {e}");
            ExitCode::FAILURE
        }
    }
}
