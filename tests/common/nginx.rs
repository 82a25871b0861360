//! A real NGINX with Kong's ngx_wasm_module per test: the same mutual-TLS listener, filter and
//! upstream as `envoy.rs` gives Envoy, in NGINX's configuration language (docs/nginx.md).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{certs_dir, free_port, repo, wasm_path, StartError};

/// How long NGINX may take to configure the filter (Wasmtime compiles the module at worker start,
/// about 2 s, more on a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The NGINX binary: `NGINX_WASM`, else what `make nginx-wasm` unpacked from
/// `../shared/tools/nginx-wasm`. Panics with how to get one: the NGINX tests never pass silently.
pub fn nginx_bin() -> PathBuf {
    let path = super::env_path("NGINX_WASM", repo().join("target/nginx-wasm/nginx"));
    assert!(
        path.is_file(),
        "NGINX with ngx_wasm_module not found at {}: run `make nginx-wasm` (it unpacks \
         ../shared/tools/nginx-wasm), or set NGINX_WASM to an NGINX built with Kong's \
         ngx_wasm_module and Wasmtime (docs/nginx.md)",
        path.display()
    );
    path
}

pub struct NginxOpts {
    /// The filter JSON, its `cluster` fields `host:port` (`for_nginx`).
    pub filter: Value,
    pub upstream_port: u16,
    /// NGINX worker processes, each with its own wasm VM.
    pub workers: u32,
    /// Lines added to the `wasm {}` block (`tls_trusted_certificate ...;`).
    pub wasm_directives: Vec<String>,
    /// More `server {}` blocks in `http {}`.
    pub servers: Vec<String>,
}

impl NginxOpts {
    pub fn new(filter: Value, upstream_port: u16) -> Self {
        NginxOpts {
            filter,
            upstream_port,
            workers: 1,
            wasm_directives: Vec::new(),
            servers: Vec::new(),
        }
    }
}

/// The filter configuration for NGINX: every dispatch target (`cluster`) named `introspection`
/// becomes `127.0.0.1:<port>`, as ngx_wasm_module dials `host:port`.
pub fn for_nginx(mut filter: Value, introspection_port: u16) -> Value {
    fn walk(v: &mut Value, target: &str) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if k == "cluster" && v.as_str() == Some("introspection") {
                        *v = Value::String(target.to_string());
                    } else {
                        walk(v, target);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, target)),
            _ => {}
        }
    }
    walk(&mut filter, &format!("127.0.0.1:{introspection_port}"));
    filter
}

/// `value` as an NGINX single-quoted string: `\` and `'` escaped (NGINX reads `\n`, `\t`, ...).
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The configuration: one mutual-TLS server whose `location /` runs certbound and proxies to the
/// upstream (a `proxy_pass` location: one answered by `return` would ignore a deny).
fn config(opts: &NginxOpts, port: u16) -> String {
    let certs = certs_dir();
    let file = |n: &str| certs.join(n).display().to_string();
    let extra: String = opts
        .wasm_directives
        .iter()
        .map(|d| format!("    {d}\n"))
        .collect();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
error_log logs/error.log info;
pid logs/nginx.pid;
events {{ worker_connections 1024; }}
wasm {{
    module certbound {wasm};
    shm_kv certbound 16m;
{extra}}}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name api.example.com;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {trust};
        ssl_verify_client optional;
        ssl_verify_depth 3;
        location / {{
            # certbound's deny holds only in the access phase (docs/nginx.md).
            proxy_wasm_request_headers_in_access on;
            proxy_wasm certbound {filter};
            proxy_pass http://127.0.0.1:{upstream};
        }}
    }}
{servers}}}
",
        workers = opts.workers,
        wasm = wasm_path().display(),
        cert = file("example.tls.pem"),
        key = file("example.tls.key"),
        trust = file("trust.pem"),
        filter = quoted(&opts.filter.to_string()),
        upstream = opts.upstream_port,
        servers = opts.servers.join("\n"),
    )
}

pub struct Nginx {
    process: Child,
    dir: PathBuf,
    pub listener_port: u16,
}

impl Nginx {
    /// Starts NGINX and waits until every worker has configured the filter; retries on a port race.
    pub fn start(opts: &NginxOpts) -> Result<Nginx, StartError> {
        super::envoy::retry_on_port_race(|| Self::start_once(opts))
    }

    fn start_once(opts: &NginxOpts) -> Result<Nginx, StartError> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "certbound-nginx-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("logs")).expect("create nginx prefix");
        let listener_port = free_port();
        fs::write(dir.join("nginx.conf"), config(opts, listener_port)).expect("write nginx.conf");
        let out = File::create(dir.join("logs/stderr.log")).expect("create stderr log");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .args(["-c", "nginx.conf"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .map_err(|e| StartError {
                message: format!("cannot run {}: {e}", nginx_bin().display()),
                log: String::new(),
            })?;
        let mut nginx = Nginx {
            process: child,
            dir,
            listener_port,
        };
        match nginx.wait_ready(opts.workers) {
            Ok(()) => Ok(nginx),
            Err(message) => {
                nginx.stop();
                Err(StartError {
                    message,
                    log: nginx.log(),
                })
            }
        }
    }

    /// Ready when every worker logged the filter's configuration and the port accepts.
    fn wait_ready(&mut self, workers: u32) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Err(format!("nginx exited early with {status}"));
            }
            let log = self.log();
            if log.contains("[emerg]") {
                return Err("nginx refused its configuration".into());
            }
            let configured = log.matches("] certbound ").count() as u32;
            let listening = std::net::TcpStream::connect(("127.0.0.1", self.listener_port)).is_ok();
            if configured >= workers && listening {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("nginx not ready after {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if !matches!(self.process.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM to the master stops its workers too (a kill would leave them running).
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.process.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// NGINX's error log (where the filter logs) and what it wrote to stderr.
    pub fn log(&self) -> String {
        let read = |p: &str| fs::read_to_string(self.dir.join(p)).unwrap_or_default();
        format!("{}{}", read("logs/stderr.log"), read("logs/error.log"))
    }

    /// `https://api.example.com:<listener>/<path>` (the clients resolve the name to 127.0.0.1).
    pub fn url(&self, path: &str) -> String {
        format!("https://api.example.com:{}{}", self.listener_port, path)
    }

    /// A client presenting `CERTS_DIR/<cert_name>.pem` / `.key`.
    pub fn client(&self, cert_name: &str) -> reqwest::blocking::Client {
        super::client(self.listener_port, Some(cert_name))
    }

    pub fn client_without_cert(&self) -> reqwest::blocking::Client {
        super::client(self.listener_port, None)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            super::print_log_tail("nginx", &self.log(), &self.dir);
        } else {
            // KEEP_NGINX=1 keeps the configuration and logs of a passing test too.
            if std::env::var_os("KEEP_NGINX").is_none() {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}
