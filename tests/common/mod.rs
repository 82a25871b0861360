//! The integration-test harness: real Envoy + the real wasm, a recording upstream, an identity
//! server double, mTLS clients, `/stats` counters, and an independent RFC 8705 thumbprint.
#![allow(dead_code, unused_imports)]

pub mod envoy;
pub mod http;
pub mod introspection;
pub mod nginx;
pub mod upstream;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[allow(unused_imports)]
pub use envoy::{Envoy, EnvoyOpts, RemoteModule, StartError};
pub use introspection::{revocation_set, Behaviour, Format, Introspection, JwksFault};
pub use nginx::{for_nginx, Nginx, NginxOpts};
pub use upstream::Upstream;

pub const ISSUER: &str = "https://idsvr.test";
pub const AUDIENCE: &str = "api.example.com";
pub const CLIENT_ID: &str = "introspect-client";
pub const CLIENT_SECRET: &str = "test-secret";
pub const PARTNER_CLIENT_ID: &str = "partner-client";
pub const CLIENT_ID_HEADER: &str = "x-certbound-client-id";
pub const PROTECTED_PATH: &str = "/api/transactions";
pub const REQUIRED_SCOPE: &str = "transactions";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn envoy_bin() -> PathBuf {
    env_path("ENVOY_BIN", repo().join(".venv/bin/envoy"))
}

pub fn wasm_path() -> PathBuf {
    env_path(
        "CERTBOUND_WASM",
        repo().join("target/wasm32-wasip1/release/certbound.wasm"),
    )
}

pub fn certs_dir() -> PathBuf {
    env_path("CERTS_DIR", repo().join("certs/out"))
}

/// A TCP port nothing listens on right now (Envoy binds it shortly after; `Envoy::start` retries
/// on the rare race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token string unique in this test process (opaque, like the identity server's).
pub fn opaque_token(label: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// RFC 8705 `x5t#S256` of the first certificate in a PEM file, computed without the filter's
/// code: PEM → DER → SHA-256 → base64url without padding.
pub fn thumbprint_of(pem_path: impl Into<PathBuf>) -> String {
    let pem_path = pem_path.into();
    let pem = std::fs::read_to_string(&pem_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", pem_path.display()));
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD.decode(b64).expect("PEM body is base64");
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// Thumbprint of `CERTS_DIR/<cert_name>.pem`.
pub fn thumbprint(cert_name: &str) -> String {
    thumbprint_of(certs_dir().join(format!("{cert_name}.pem")))
}

/// The claims of a token bound to `thumbprint`, valid for 5 minutes.
pub fn bound_claims(thumbprint: &str, scope: &str) -> Value {
    let mut claims = unbound_claims(scope);
    claims["cnf"] = json!({"x5t#S256": thumbprint});
    claims
}

/// The same claims without `cnf`.
pub fn unbound_claims(scope: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "sub": "partner-user",
        "client_id": PARTNER_CLIENT_ID,
        "scope": scope,
        "jti": opaque_token("jti"),
    })
}

/// The filter configuration of config.md for `format`, pointing at the harness's servers.
pub fn filter_config(format: Format) -> Value {
    let mut config = json!({
        "introspection": {
            "format": format.as_str(),
            "cluster": "introspection",
            "authority": "introspection",
            "path": introspection::INTROSPECTION_PATH,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "timeout_ms": 500
        },
        "claim_headers": {"client_id": CLIENT_ID_HEADER},
        "routes": [{"path_prefix": PROTECTED_PATH, "required_scopes": [REQUIRED_SCOPE]}]
    });
    let jwks = json!({"cluster": "introspection", "authority": "introspection", "path": introspection::JWKS_PATH});
    match format {
        Format::Json => {}
        Format::Jwt => {
            config["jwt"] = json!({"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks});
        }
        Format::IntrospectionJwt => {
            config["jwt"] = json!({"issuer": ISSUER, "jwks": jwks});
        }
    }
    config
}

/// A failing test's view of a proxy's log: its last 60 lines, and where the rest was kept.
pub fn print_log_tail(proxy: &str, log: &str, kept_in: &Path) {
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    eprintln!(
        "--- {proxy} log (last {} lines; config and log kept in {}) ---",
        tail.len(),
        kept_in.display()
    );
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}

/// A plain HTTP client (admin interfaces, local servers): no proxy, `timeout` per request.
pub fn plain_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("HTTP client")
}

/// An HTTPS client builder as a partner has it: rustls trusting only `CERTS_DIR/root.pem`, the
/// example's `hosts` resolved to 127.0.0.1 on their ports, no proxy, and the client certificate
/// and key of `identity` (PEM files) when given.
pub fn mtls_client_builder(
    hosts: &[(&str, u16)],
    identity: Option<(&Path, &Path)>,
) -> reqwest::blocking::ClientBuilder {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let root = read(&certs_dir().join("root.pem"));
    let mut builder = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&root).expect("root.pem"));
    for (host, port) in hosts {
        builder = builder.resolve(host, SocketAddr::from(([127, 0, 0, 1], *port)));
    }
    if let Some((cert, key)) = identity {
        let mut pem = read(cert);
        pem.push(b'\n');
        pem.extend(read(key));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
    }
    builder
}

/// `client`, with its connections from `local` (a loopback address such as 127.0.0.2).
pub fn client_from(
    listener_port: u16,
    cert_name: Option<&str>,
    local: std::net::IpAddr,
) -> reqwest::blocking::Client {
    let dir = certs_dir();
    let files = cert_name.map(|n| (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key"))));
    let identity = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    mtls_client_builder(&[("api.example.com", listener_port)], identity)
        .local_address(local)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTPS client")
}

/// A client for `https://api.example.com:<port>` presenting `CERTS_DIR/<cert_name>.pem` + `.key`
/// if given.
pub fn client(listener_port: u16, cert_name: Option<&str>) -> reqwest::blocking::Client {
    let dir = certs_dir();
    let files = cert_name.map(|n| (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key"))));
    let identity = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    mtls_client_builder(&[("api.example.com", listener_port)], identity)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build client")
}

/// A reply as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends a request and collects the reply; panics on a transport error.
pub fn send(request: reqwest::blocking::RequestBuilder) -> Reply {
    reply_of(request.send().expect("request failed"))
}

/// The reply of a response that arrived.
pub fn reply_of(resp: reqwest::blocking::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.text().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET `path` with `Authorization: Bearer <token>` (if any).
pub fn get(
    client: &reqwest::blocking::Client,
    envoy: &Envoy,
    path: &str,
    token: Option<&str>,
) -> Reply {
    let mut request = client.get(envoy.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request)
}

/// `GET /stats?filter=certbound` on the admin port, as name → value (non-integer lines skipped).
pub fn stats(admin_port: u16) -> HashMap<String, u64> {
    stats_matching(admin_port, "certbound")
}

/// `GET /stats?filter=<regex>` on the admin port, as name → value.
pub fn stats_matching(admin_port: u16, filter: &str) -> HashMap<String, u64> {
    // certbound hands its counts to Envoy on its timer (every 100 ms), not on every request.
    std::thread::sleep(Duration::from_millis(250));
    let text = envoy::admin_client()
        .get(format!("http://127.0.0.1:{admin_port}/stats"))
        .query(&[("filter", filter)])
        .send()
        .and_then(|r| r.text())
        .expect("GET /stats");
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The stat whose name is `suffix` or ends with `.<suffix>`; 0 if absent.
pub fn counter(stats: &HashMap<String, u64>, suffix: &str) -> u64 {
    let dotted = format!(".{suffix}");
    stats
        .iter()
        .find(|(name, _)| *name == suffix || name.ends_with(&dotted))
        .map(|(_, v)| *v)
        .unwrap_or(0)
}
