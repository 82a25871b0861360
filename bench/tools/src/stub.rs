//! The identity-server stub: every introspection of any token is answered, after a fixed delay,
//! with one pre-signed phantom-token JWT (`application/jwt`, bound to the bench's client
//! certificate); `GET /jwks` serves the key set; `GET /stats` counts the calls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Args;

struct Stub {
    jwt: Bytes,
    jwks: Bytes,
    delay: Duration,
    /// `Authorization` the introspection call must carry (`Basic base64(id:secret)`), if set.
    basic: Option<String>,
    introspections: AtomicU64,
    jwks_fetches: AtomicU64,
    rejected: AtomicU64,
}

pub fn run(args: &Args) -> Result<(), String> {
    let port: u16 = args.num("port", 0)?;
    let read = |name: &str| -> Result<Bytes, String> {
        let path = args.req(name)?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("--{name} {path}: {e}"))?;
        Ok(Bytes::from(text.trim().to_string()))
    };
    let stub = Arc::new(Stub {
        jwt: read("jwt")?,
        jwks: read("jwks")?,
        delay: Duration::from_micros((args.num::<f64>("delay-ms", 2.0)? * 1000.0) as u64),
        basic: args
            .opt("basic")
            .map(|b| format!("Basic {}", base64(b.as_bytes()))),
        introspections: AtomicU64::new(0),
        jwks_fetches: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening on {local}");
        loop {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let stub = stub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(stub.clone(), req));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

fn reply(status: u16, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap_or_default()
}

async fn handle(
    stub: Arc<Stub>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let authorized = match &stub.basic {
        None => true,
        Some(expected) => req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes()),
    };
    // Read the whole request body, so the connection stays usable.
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(match (method.as_str(), path.as_str()) {
        ("POST", "/introspect") => {
            if !authorized
                || !body.starts_with(b"token=") && !body.windows(7).any(|w| w == b"&token=")
            {
                stub.rejected.fetch_add(1, Ordering::Relaxed);
                reply(
                    401,
                    "application/json",
                    Bytes::from_static(br#"{"error":"invalid_client"}"#),
                )
            } else {
                stub.introspections.fetch_add(1, Ordering::Relaxed);
                if !stub.delay.is_zero() {
                    tokio::time::sleep(stub.delay).await;
                }
                reply(200, "application/jwt", stub.jwt.clone())
            }
        }
        ("GET", "/jwks") => {
            stub.jwks_fetches.fetch_add(1, Ordering::Relaxed);
            reply(200, "application/json", stub.jwks.clone())
        }
        // The revocation feed, with no event: the hit is measured as the example ships it.
        ("GET", "/events") => reply(
            200,
            "application/json",
            Bytes::from_static(br#"{"events":[],"next":"n.0"}"#),
        ),
        ("GET", "/stats") => reply(
            200,
            "application/json",
            Bytes::from(format!(
                "{{\"introspections\":{},\"jwks_fetches\":{},\"rejected\":{}}}",
                stub.introspections.load(Ordering::Relaxed),
                stub.jwks_fetches.load(Ordering::Relaxed),
                stub.rejected.load(Ordering::Relaxed)
            )),
        ),
        _ => reply(404, "text/plain", Bytes::from_static(b"not found")),
    })
}

/// Standard base64 with padding (for the Basic credentials only).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
