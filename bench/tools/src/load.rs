//! The load generator: N keep-alive mutual-TLS connections, one request at a time on each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::{json_str, Args};

/// What goes after `Authorization: Bearer ` on each request.
enum Tokens {
    None,
    Fixed(String),
    /// Round-robin over the list, across all connections.
    RoundRobin(Vec<String>),
    /// `PREFIX` followed by a sequence number: every request carries a token never seen before.
    Unique(String),
}

impl Tokens {
    fn next(&self, seq: &AtomicU64) -> Option<String> {
        match self {
            Tokens::None => None,
            Tokens::Fixed(t) => Some(t.clone()),
            Tokens::RoundRobin(list) => {
                let i = seq.fetch_add(1, Ordering::Relaxed) as usize;
                Some(list[i % list.len()].clone())
            }
            Tokens::Unique(prefix) => {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                Some(format!("{prefix}{i:012}"))
            }
        }
    }
}

struct Plan {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    host: String,
    path: String,
    tokens: Tokens,
    token_seq: AtomicU64,
    /// Next request number (the schedule, in `--rate` mode; the budget, with `--requests`).
    request_seq: AtomicU64,
    rate: Option<f64>,
    max_requests: Option<u64>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// What one connection measured.
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    non_200: u64,
    errors: u64,
    connects: u64,
    /// Every response, measured or not (warm-up included): for CPU time per request.
    all: u64,
}

fn tls_config(args: &Args) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let ca = args.req("ca")?;
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {ca}: {e}"))? {
        let cert = cert.map_err(|e| format!("--ca {ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("--ca {ca}: {e}"))?;
    }
    let cert = args.req("cert")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("--cert {cert}: {e}"))?;
    let key = args.req("key")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--key {key}: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client certificate: {e}"))
}

fn tokens(args: &Args) -> Result<Tokens, String> {
    if let Some(t) = args.opt("token") {
        return Ok(Tokens::Fixed(t.to_string()));
    }
    if let Some(file) = args.opt("tokens-file") {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("--tokens-file {file}: {e}"))?;
        let list: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if list.is_empty() {
            return Err(format!("--tokens-file {file}: no tokens"));
        }
        return Ok(Tokens::RoundRobin(list));
    }
    if let Some(prefix) = args.opt("unique-tokens") {
        return Ok(Tokens::Unique(prefix.to_string()));
    }
    Ok(Tokens::None)
}

pub fn run(args: &Args, probe: bool) -> Result<(), String> {
    let addr: SocketAddr = args
        .req("addr")?
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let sni = args.req("sni")?.to_string();
    let server_name = ServerName::try_from(sni.clone()).map_err(|e| format!("--sni: {e}"))?;
    let connector = TlsConnector::from(Arc::new(tls_config(args)?));
    let path = args.opt("path").unwrap_or("/").to_string();
    let tokens = tokens(args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    if probe {
        let token = tokens.next(&AtomicU64::new(0));
        return rt.block_on(async {
            let mut stream = connect(&connector, addr, &server_name).await?;
            let req = request(&sni, &path, token.as_deref());
            let mut buf = Vec::new();
            let resp = exchange(&mut stream, req.as_bytes(), &mut buf, true)
                .await
                .map_err(|e| e.to_string())?;
            let headers: Vec<String> = resp
                .headers
                .iter()
                .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
                .collect();
            println!(
                "{{\"status\":{},\"headers\":{{{}}},\"body\":{}}}",
                resp.status,
                headers.join(","),
                json_str(&String::from_utf8_lossy(&resp.body))
            );
            Ok(())
        });
    }

    let connections: usize = args.num("connections", 32)?;
    let duration: f64 = args.num("duration", 5.0)?;
    let warmup: f64 = args.num("warmup", 1.0)?;
    let rate: Option<f64> = args
        .opt("rate")
        .map(|_| args.num("rate", 0.0))
        .transpose()?;
    let max_requests: Option<u64> = args
        .opt("requests")
        .map(|_| args.num("requests", 0))
        .transpose()?;
    if connections == 0 || duration <= 0.0 || warmup < 0.0 || rate.is_some_and(|r| r <= 0.0) {
        return Err("--connections, --duration, --rate must be positive".into());
    }

    rt.block_on(async move {
        let start = Instant::now();
        let (measure_from, end) = if max_requests.is_some() {
            // A fixed number of requests (warming a cache): everything counts, no time limit.
            (start, start + Duration::from_secs(24 * 3600))
        } else {
            let m = start + Duration::from_secs_f64(warmup);
            (m, m + Duration::from_secs_f64(duration))
        };
        let plan = Arc::new(Plan {
            addr,
            server_name,
            connector,
            host: sni,
            path,
            tokens,
            token_seq: AtomicU64::new(0),
            request_seq: AtomicU64::new(0),
            rate,
            max_requests,
            start,
            measure_from,
            end,
        });
        let workers: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(worker(plan.clone())))
            .collect();
        let mut total = new_tally();
        for w in workers {
            let t = w.await.map_err(|e| e.to_string())?;
            total.latency_us.add(&t.latency_us).map_err(|e| e.to_string())?;
            total.ok += t.ok;
            total.non_200 += t.non_200;
            total.errors += t.errors;
            total.connects += t.connects;
            total.all += t.all;
        }
        let elapsed = if max_requests.is_some() {
            start.elapsed().as_secs_f64()
        } else {
            duration
        };
        let h = &total.latency_us;
        let done = total.ok + total.non_200;
        println!(
            "{{\"requests\":{},\"ok\":{},\"non_200\":{},\"errors\":{},\"connects\":{},\"all_requests\":{},\"seconds\":{:.3},\
             \"rps\":{:.1},\"rate\":{},\"connections\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\
             \"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1}}}",
            done,
            total.ok,
            total.non_200,
            total.errors,
            total.connects,
            total.all,
            elapsed,
            done as f64 / elapsed,
            rate.map_or("null".to_string(), |r| format!("{r}")),
            connections,
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.mean()
        );
        Ok(())
    })
}

fn new_tally() -> Tally {
    Tally {
        // 1 µs to 60 s at 3 significant digits.
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ok: 0,
        non_200: 0,
        errors: 0,
        connects: 0,
        all: 0,
    }
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &ServerName<'static>,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    connector
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

fn request(host: &str, path: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!(
            "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: certbound-bench\r\nauthorization: Bearer {t}\r\n\r\n"
        ),
        None => format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: certbound-bench\r\n\r\n"),
    }
}

async fn worker(plan: Arc<Plan>) -> Tally {
    let mut tally = new_tally();
    let mut stream: Option<TlsStream<TcpStream>> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        // When this connection became free for its next request.
        let free = Instant::now();
        let scheduled = if plan.rate.is_some() || plan.max_requests.is_some() {
            let i = plan.request_seq.fetch_add(1, Ordering::Relaxed);
            if plan.max_requests.is_some_and(|n| i >= n) {
                break;
            }
            match plan.rate {
                Some(r) => {
                    let t = plan.start + Duration::from_secs_f64(i as f64 / r);
                    if t >= plan.end {
                        break;
                    }
                    tokio::time::sleep_until(t).await;
                    t
                }
                None => Instant::now(),
            }
        } else {
            Instant::now()
        };
        if scheduled >= plan.end {
            break;
        }
        let measured = scheduled >= plan.measure_from;
        // Latency counts from the scheduled time when the connection was still busy then (the
        // server fell behind: no coordinated omission), else from when the timer let us send:
        // the timer's millisecond granularity is the generator's delay, not the server's.
        let from = if free > scheduled {
            scheduled
        } else {
            Instant::now()
        };
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match connect(&plan.connector, plan.addr, &plan.server_name).await {
                Ok(s) => {
                    tally.connects += 1;
                    stream.insert(s)
                }
                Err(e) => {
                    if tally.errors == 0 {
                        eprintln!("certbound-bench load: {e}");
                    }
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let token = plan.tokens.next(&plan.token_seq);
        let req = request(&plan.host, &plan.path, token.as_deref());
        let result = exchange(s, req.as_bytes(), &mut buf, false).await;
        let done = Instant::now();
        match result {
            Ok(resp) => {
                tally.all += 1;
                if measured && done <= plan.end {
                    let us = done.duration_since(from).as_micros() as u64;
                    let _ = tally.latency_us.record(us.max(1));
                    if resp.status == 200 {
                        tally.ok += 1;
                    } else {
                        tally.non_200 += 1;
                    }
                }
                if resp.close {
                    stream = None;
                }
            }
            Err(e) => {
                if tally.errors == 0 {
                    eprintln!("certbound-bench load: {e}");
                }
                if measured {
                    tally.errors += 1;
                }
                stream = None;
                buf.clear();
            }
        }
    }
    tally
}

struct Response {
    status: u16,
    close: bool,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Writes one request and reads one response (`content-length` framed, as Envoy's are).
async fn exchange(
    stream: &mut TlsStream<TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
    keep: bool,
) -> std::io::Result<Response> {
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (status, close, header_len, content_length, headers) = {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut cl = None;
                    let mut close = false;
                    let mut headers = Vec::new();
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            cl = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok());
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                        if keep {
                            headers.push((
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            ));
                        }
                    }
                    (resp.code.unwrap_or(0), close, Some(n), cl, headers)
                }
                Ok(httparse::Status::Partial) => (0, false, None, None, Vec::new()),
                Err(e) => return Err(std::io::Error::other(format!("bad response: {e}"))),
            }
        };
        if let Some(n) = header_len {
            let body_len = match (content_length, status) {
                (Some(cl), _) => cl,
                (None, 204 | 304) => 0,
                (None, _) => {
                    return Err(std::io::Error::other("response without content-length"));
                }
            };
            while buf.len() < n + body_len {
                let got = stream.read(&mut chunk).await?;
                if got == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            let body = if keep {
                buf[n..n + body_len].to_vec()
            } else {
                Vec::new()
            };
            return Ok(Response {
                status,
                close,
                headers,
                body,
            });
        }
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}
