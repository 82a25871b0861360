//! The example API certbound protects: `POST /api/transactions` and `GET /api/transactions`.
//!
//! It sits behind the gateway on plain HTTP and trusts nothing in the request but the token in
//! `Authorization`, which it verifies itself (see `auth`): no header the gateway adds is believed.
//! Configuration is read from the environment (`--help` lists it).

mod auth;
mod idp;

use std::collections::HashMap;
use std::io::Read;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use auth::{Policy, Principal, Reject, TokenKind};
use idp::{Introspector, Keys, Unavailable};

const HELP: &str = "certbound example API. Environment:
  API_HOST (127.0.0.1), API_PORT (8080)           where it serves plain HTTP
  API_ADMIN_PORT (unset)                          if set, GET /stats on 127.0.0.1:PORT (request counters)
  API_ISSUER (https://login.example.com:8443/oauth/v2/oauth-anonymous)
  API_AUDIENCE (api.example.com)                  aud of accepted at+jwt access tokens
  API_JWKS_URL (https://127.0.0.1:8444/oauth/v2/oauth-anonymous/jwks)
  API_CA_FILE (certs/out/root.pem)                the only CA trusted for the identity server
  API_INTROSPECTION_URL (unset)                   if set, opaque tokens are introspected there, and
                                                  RFC 9701 responses addressed to the client below accepted
  API_INTROSPECTION_CLIENT_ID (introspect-client)
  API_INTROSPECTION_CLIENT_SECRET ($INTROSPECT_CLIENT_SECRET, else introspect-client.secret beside API_CA_FILE)
  API_CLOCK_SKEW_SECONDS (60), API_JWKS_STARTUP_SECONDS (30), API_THREADS (4)";

const MAX_REQUEST_BODY: u64 = 64 * 1024;
const REALM: &str = "api";

struct Config {
    listen: String,
    admin_listen: Option<String>,
    policy: Policy,
    jwks_url: String,
    ca_file: String,
    introspection_url: Option<String>,
    introspection_client_id: String,
    introspection_client_secret: String,
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
        let introspection_url = env_opt("API_INTROSPECTION_URL");
        let introspection_client_id = env_or("API_INTROSPECTION_CLIENT_ID", "introspect-client");
        // This installation's secret (certs/make-certs.sh writes it beside the certificates).
        let secret_default = env_opt("INTROSPECT_CLIENT_SECRET").unwrap_or_else(|| {
            let ca = env_or("API_CA_FILE", "certs/out/root.pem");
            let file = std::path::Path::new(&ca).with_file_name("introspect-client.secret");
            std::fs::read_to_string(file)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        });
        Ok(Config {
            listen: format!("{host}:{port}"),
            admin_listen: admin_port.map(|p| format!("127.0.0.1:{p}")),
            policy: Policy {
                issuer: env_or(
                    "API_ISSUER",
                    "https://login.example.com:8443/oauth/v2/oauth-anonymous",
                ),
                audience: env_or("API_AUDIENCE", "api.example.com"),
                introspection_audience: introspection_url
                    .as_ref()
                    .map(|_| introspection_client_id.clone()),
                clock_skew_seconds: env_num("API_CLOCK_SKEW_SECONDS", 60)?,
            },
            jwks_url: env_or(
                "API_JWKS_URL",
                "https://127.0.0.1:8444/oauth/v2/oauth-anonymous/jwks",
            ),
            ca_file: env_or("API_CA_FILE", "certs/out/root.pem"),
            introspection_client_secret: env_or("API_INTROSPECTION_CLIENT_SECRET", &secret_default),
            introspection_url,
            introspection_client_id,
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
    introspector: Option<Introspector>,
    stats: Stats,
    transactions: Mutex<Vec<Transaction>>,
    next_id: AtomicU64,
}

/// The path of a request target, without its query.
fn path_of(url: &str) -> &str {
    url.split('?').next().unwrap_or_default()
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
            headers: vec![("WWW-Authenticate", challenge)],
        }
    }
}

impl App {
    fn authenticate(&self, request: &Request) -> Result<Principal, Reply> {
        let values: Vec<&str> = request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("authorization"))
            .map(|h| h.value.as_str())
            .collect();
        let token = auth::bearer_token(&values).map_err(|r| match r {
            Reject::InvalidRequest(why) => Reply::unauthorized(Some("invalid_request"), why),
            _ => Reply::unauthorized(None, "a bearer token is required"),
        })?;
        let now = now();
        let verdict = if auth::is_jwt(token) {
            self.keys.verify(token, &self.policy, now)
        } else if let Some(introspector) = &self.introspector {
            match introspector.introspect(token, &self.policy, now) {
                Ok(verdict) => verdict,
                Err(Unavailable(why)) => {
                    eprintln!("api: introspection unavailable: {why}");
                    return Err(Reply::json(
                        503,
                        json!({ "error": "temporarily_unavailable", "error_description": "cannot verify the token now" }),
                    ));
                }
            }
        } else {
            Err(Reject::InvalidToken(
                "opaque tokens are not accepted".into(),
            ))
        };
        verdict.map_err(|r| {
            let why = match r {
                Reject::InvalidToken(why) => why,
                other => format!("{other:?}"),
            };
            eprintln!("api: token refused: {why}");
            Reply::unauthorized(Some("invalid_token"), "the access token is invalid")
        })
    }

    fn handle(&self, request: &mut Request) -> (Reply, Option<Principal>) {
        self.stats.requests.fetch_add(1, Ordering::SeqCst);
        let principal = match self.authenticate(request) {
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
        let path = path_of(request.url()).to_string();
        let reply = match (request.method(), path.as_str()) {
            (Method::Post, "/api/transactions") => self.create(request, &principal),
            (Method::Get, "/api/transactions") => self.list(&principal),
            (_, "/api/transactions") => Reply::json(405, json!({ "error": "method_not_allowed" })),
            _ => Reply::json(404, json!({ "error": "not_found" })),
        };
        (reply, Some(principal))
    }

    fn create(&self, request: &mut Request, principal: &Principal) -> Reply {
        if !principal.has_scope("transactions") {
            return Reply {
                status: 403,
                body: json!({ "error": "insufficient_scope" }),
                headers: vec![(
                    "WWW-Authenticate",
                    format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"transactions\""),
                )],
            };
        }
        let mut body = Vec::new();
        if request
            .as_reader()
            .take(MAX_REQUEST_BODY + 1)
            .read_to_end(&mut body)
            .is_err()
            || body.len() as u64 > MAX_REQUEST_BODY
        {
            return Reply::json(
                400,
                json!({ "error": "invalid_request", "error_description": "unreadable or too large body" }),
            );
        }
        // The reference system's client posts `Content-Type: application/json` with no body:
        // that is a transaction without an amount.
        let amount = match serde_json::from_slice::<Value>(&body) {
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

fn respond(request: Request, reply: Reply) {
    let mut response = Response::from_string(reply.body.to_string()).with_status_code(reply.status);
    let mut headers: HashMap<&str, String> =
        HashMap::from([("Content-Type", "application/json".to_string())]);
    headers.extend(reply.headers);
    for (name, value) in headers {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        eprintln!("api: cannot send the response: {e}");
    }
}

fn serve(app: &App, server: &Server) {
    loop {
        let mut request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("api: accept failed: {e}");
                continue;
            }
        };
        let method = request.method().to_string();
        let path = path_of(request.url()).to_string();
        let (reply, principal) = app.handle(&mut request);
        // One line per request: never the token, only who it was and what happened.
        let who = principal
            .map(|p| format!("client_id={} token={}", p.client_id, p.kind.name()))
            .unwrap_or_else(|| "unauthenticated".into());
        eprintln!("api: {method} {path} {} {who}", reply.status);
        respond(request, reply);
    }
}

fn serve_admin(app: &App, server: &Server) {
    loop {
        let Ok(request) = server.recv() else { continue };
        let reply = match (request.method(), request.url()) {
            (Method::Get, "/stats") => Reply::json(200, app.stats.json(app.transaction_count())),
            _ => Reply::json(404, json!({ "error": "not_found" })),
        };
        respond(request, reply);
    }
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
    let agent = idp::agent(&config.ca_file, Duration::from_secs(5))?;
    let keys = Keys::new(
        agent.clone(),
        config.jwks_url.clone(),
        Duration::from_secs(5),
    );
    let introspector = config.introspection_url.clone().map(|url| Introspector {
        agent,
        url,
        client_id: config.introspection_client_id.clone(),
        client_secret: config.introspection_client_secret.clone(),
    });

    // Keys first, with retries: the identity server may still be starting. If it never answers,
    // the API serves anyway and fetches the keys on the first token that needs them.
    let deadline = std::time::Instant::now() + config.jwks_startup;
    loop {
        match keys.fetch() {
            Ok(n) => {
                eprintln!("api: {n} signing key(s) from {}", config.jwks_url);
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("api: key set not available yet ({e}); retrying");
                thread::sleep(Duration::from_secs(1));
            }
            Err(e) => {
                eprintln!("api: key set not available ({e}); will fetch it on demand");
                break;
            }
        }
    }

    let app = Arc::new(App {
        policy: config.policy.clone(),
        keys,
        introspector,
        stats: Stats::default(),
        transactions: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
    });
    let server = Arc::new(
        Server::http(&config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?,
    );
    if let Some(admin) = &config.admin_listen {
        let admin_server =
            Server::http(admin).map_err(|e| format!("cannot listen on {admin}: {e}"))?;
        let app = Arc::clone(&app);
        thread::spawn(move || serve_admin(&app, &admin_server));
        eprintln!("api: stats on http://{admin}/stats");
    }
    eprintln!(
        "api: listening on http://{} (issuer {}, audience {}, opaque tokens {})",
        config.listen,
        config.policy.issuer,
        config.policy.audience,
        if app.introspector.is_some() {
            "introspected"
        } else {
            "refused"
        }
    );
    let workers: Vec<_> = (0..config.threads)
        .map(|_| {
            let (app, server) = (Arc::clone(&app), Arc::clone(&server));
            thread::spawn(move || serve(&app, &server))
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
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
