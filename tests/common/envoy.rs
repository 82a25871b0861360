//! A real Envoy process per test: generated config, readiness wait, log capture, kill on drop.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{certs_dir, envoy_bin, free_port, wasm_path};

/// How long Envoy may take to become ready (V8 compiles the module on a loaded 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EnvoyOpts {
    /// The filter JSON; `None` leaves the wasm filter out of the chain.
    pub filter: Option<Value>,
    pub introspection_port: u16,
    pub upstream_port: u16,
    pub wasm: PathBuf,
    /// `require_client_certificate` of the listener (true unless a test needs certificate-less TLS).
    pub require_client_certificate: bool,
    /// Load the module with `vm_config.code.remote` instead of `local: wasm` (tests/distribution.rs).
    pub remote: Option<RemoteModule>,
    /// Envoy's worker threads, each with its own wasm VM.
    pub concurrency: u32,
    /// Serve the listener from a file (LDS) so `Envoy::reconfigure` can replace it while running.
    pub listener_from_file: bool,
    /// The wasm VM's environment (`vm_config.environment_variables.key_values`).
    pub vm_env: Vec<(String, String)>,
    /// Fields merged into the HTTP connection manager (`forward_client_cert_details`, ...).
    pub hcm: Value,
}

/// Where Envoy downloads the module: `http://127.0.0.1:<port>/certbound.wasm` through a cluster
/// `wasm_server`, checked against `sha256` (lower-case hex), retried `num_retries` times.
pub struct RemoteModule {
    pub port: u16,
    pub sha256: String,
    pub num_retries: u32,
}

impl EnvoyOpts {
    pub fn new(filter: Value, introspection_port: u16, upstream_port: u16) -> Self {
        EnvoyOpts {
            filter: Some(filter),
            introspection_port,
            upstream_port,
            wasm: wasm_path(),
            require_client_certificate: true,
            remote: None,
            concurrency: 1,
            listener_from_file: false,
            vm_env: Vec::new(),
            hcm: Value::Null,
        }
    }

    pub fn without_filter(introspection_port: u16, upstream_port: u16) -> Self {
        EnvoyOpts {
            filter: None,
            ..Self::new(Value::Null, introspection_port, upstream_port)
        }
    }
}

/// Why Envoy did not become ready, with its log.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub log: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- envoy log ---\n{}", self.message, self.log)
    }
}

/// Runs `start` up to three times while it fails because a port found free was taken meanwhile.
pub fn retry_on_port_race<T>(start: impl Fn() -> Result<T, StartError>) -> Result<T, StartError> {
    let mut last = None;
    for _ in 0..3 {
        match start() {
            Ok(started) => return Ok(started),
            Err(e) if e.log.contains("ddress already in use") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Kills the child process when dropped.
struct ProcessGuard(Child);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Envoy {
    // Field order matters: the process dies before its directory is removed.
    process: ProcessGuard,
    dir: PathBuf,
    pub listener_port: u16,
    pub admin_port: u16,
}

impl Envoy {
    /// Starts Envoy and waits for admin `/ready` to say LIVE; retries on a port race.
    pub fn start(opts: &EnvoyOpts) -> Result<Envoy, StartError> {
        preconditions(opts)?;
        retry_on_port_race(|| Self::start_once(opts))
    }

    fn start_once(opts: &EnvoyOpts) -> Result<Envoy, StartError> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "certbound-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        let listener_port = free_port();
        let admin_port = free_port();
        let config = bootstrap(opts, listener_port, admin_port, &dir);
        let config_path = dir.join("envoy.yaml");
        fs::write(
            &config_path,
            serde_json::to_string_pretty(&config).expect("json"),
        )
        .expect("write envoy config");
        let log_path = dir.join("envoy.log");
        let log = File::create(&log_path).expect("create envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--log-level", "warn"])
            .args(["--component-log-level", "wasm:debug"])
            .arg("--disable-hot-restart")
            .args(["--base-id", &admin_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .map_err(|e| StartError {
                message: format!("cannot run {}: {e}", envoy_bin().display()),
                log: String::new(),
            })?;
        let mut envoy = Envoy {
            process: ProcessGuard(child),
            dir,
            listener_port,
            admin_port,
        };
        match envoy.wait_ready() {
            Ok(()) => Ok(envoy),
            Err(message) => {
                // Stop it before reading the log, so the log is complete.
                let _ = envoy.process.0.kill();
                let _ = envoy.process.0.wait();
                Err(StartError {
                    message,
                    log: envoy.log(),
                })
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let admin = admin_client();
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.0.try_wait() {
                return Err(format!("envoy exited early with {status}"));
            }
            if let Ok(resp) = admin.get(&url).send() {
                if resp.text().unwrap_or_default().trim() == "LIVE" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("envoy not ready after {READY_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Gives a `listener_from_file` Envoy the listener of `opts` (same port) and waits until Envoy
    /// says it took it (`listener_manager.listener_modified` grows).
    pub fn reconfigure(&self, opts: &EnvoyOpts) {
        assert!(
            opts.listener_from_file,
            "reconfigure needs listener_from_file"
        );
        let modified = || {
            super::stats_matching(self.admin_port, "listener_manager.listener_modified")
                .values()
                .sum::<u64>()
        };
        let before = modified();
        write_listener_file(&self.dir, &listener(opts, self.listener_port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while modified() == before {
            assert!(
                Instant::now() < deadline,
                "Envoy did not take the new listener"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's heap in use (admin `/memory`, `allocated`), in bytes.
    pub fn allocated_bytes(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/memory", self.admin_port);
        let text = admin_client()
            .get(&url)
            .send()
            .and_then(|r| r.text())
            .expect("admin /memory");
        let memory: Value = serde_json::from_str(&text).expect("/memory is JSON");
        memory["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("allocated in /memory")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.0.try_wait(), Ok(None))
    }

    /// Everything Envoy wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://api.example.com:<listener>/<path>` (the clients resolve the name to 127.0.0.1).
    pub fn url(&self, path: &str) -> String {
        format!("https://api.example.com:{}{}", self.listener_port, path)
    }

    /// A client presenting `CERTS_DIR/<cert_name>.pem` / `.key`.
    pub fn client(&self, cert_name: &str) -> reqwest::blocking::Client {
        super::client(self.listener_port, Some(cert_name))
    }

    /// A client without any client certificate.
    pub fn client_without_cert(&self) -> reqwest::blocking::Client {
        super::client(self.listener_port, None)
    }

    /// `GET /stats?filter=certbound` as name → value.
    pub fn stats(&self) -> HashMap<String, u64> {
        super::stats(self.admin_port)
    }

    /// The certbound counter whose name ends with `suffix` (e.g. `certbound.cache_hits`), 0 if absent.
    pub fn counter(&self, suffix: &str) -> u64 {
        super::counter(&self.stats(), suffix)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        if thread::panicking() {
            super::print_log_tail("envoy", &self.log(), &self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Missing inputs get a message that says how to make them, instead of an Envoy error.
fn preconditions(opts: &EnvoyOpts) -> Result<(), StartError> {
    let missing = |what: &str, path: &Path, how: &str| StartError {
        message: format!("{what} not found at {} ({how})", path.display()),
        log: String::new(),
    };
    if !envoy_bin().exists() {
        return Err(missing(
            "Envoy",
            &envoy_bin(),
            "set ENVOY_BIN, or `make setup`",
        ));
    }
    if opts.filter.is_some() && opts.remote.is_none() && !opts.wasm.exists() {
        let how = "set CERTBOUND_WASM, or `cargo build --release --target wasm32-wasip1`";
        return Err(missing("the filter", &opts.wasm, how));
    }
    let trust = certs_dir().join("trust.pem");
    if !trust.exists() {
        return Err(missing(
            "the certificates",
            &trust,
            "set CERTS_DIR, or run certs/make-certs.sh",
        ));
    }
    Ok(())
}

pub(crate) fn admin_client() -> reqwest::blocking::Client {
    super::plain_client(Duration::from_secs(5))
}

/// `vm_config.code`: the local file, or the remote download of `opts.remote`.
fn module_code(opts: &EnvoyOpts) -> Value {
    match &opts.remote {
        None => envoy_config::local_code(&opts.wasm),
        Some(r) => envoy_config::remote_code(r.port, &r.sha256, r.num_retries),
    }
}

/// Where a `listener_from_file` Envoy reads its listener.
const LISTENER_FILE: &str = "listeners.json";

/// The bootstrap, from the one generator of Envoy configurations (tools/envoy-config): one
/// mutual-TLS listener, the filter, the clusters.
fn bootstrap(opts: &EnvoyOpts, listener_port: u16, admin_port: u16, dir: &Path) -> Value {
    let mut clusters = vec![
        envoy_config::static_cluster("introspection", opts.introspection_port),
        envoy_config::static_cluster("upstream", opts.upstream_port),
    ];
    if let Some(remote) = &opts.remote {
        clusters.push(envoy_config::static_cluster("wasm_server", remote.port));
    }
    let listener = listener(opts, listener_port);
    if !opts.listener_from_file {
        return envoy_config::bootstrap(admin_port, vec![listener], clusters);
    }
    write_listener_file(dir, &listener);
    let mut config = envoy_config::bootstrap(admin_port, Vec::new(), clusters);
    // Envoy refuses dynamic resources without a node identity.
    config["node"] = serde_json::json!({"id": "certbound-test", "cluster": "certbound-test"});
    config["dynamic_resources"] = serde_json::json!({"lds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": dir.join(LISTENER_FILE)}
    }});
    config
}

/// Replaces the listener file in one rename, the way Envoy's file watch expects an update.
fn write_listener_file(dir: &Path, listener: &Value) {
    let mut listener = listener.clone();
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener".into();
    let update = serde_json::json!({"resources": [listener]});
    let staged = dir.join(format!("{LISTENER_FILE}.new"));
    fs::write(&staged, serde_json::to_string(&update).expect("json")).expect("write listener");
    fs::rename(&staged, dir.join(LISTENER_FILE)).expect("move listener into place");
}

fn listener(opts: &EnvoyOpts, listener_port: u16) -> Value {
    let http_filters = opts
        .filter
        .iter()
        .map(|f| {
            let filter = envoy_config::wasm_filter("certbound", module_code(opts), Some(f));
            if opts.vm_env.is_empty() {
                return filter;
            }
            let key_values: serde_json::Map<String, Value> = opts
                .vm_env
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            envoy_config::with_vm_environment(
                filter,
                serde_json::json!({ "key_values": key_values }),
            )
        })
        .collect();
    let tls = envoy_config::downstream_tls(&certs_dir(), opts.require_client_certificate);
    let mut listener = envoy_config::api_listener(
        listener_port,
        tls,
        envoy_config::routes_to("upstream"),
        http_filters,
    );
    if let Value::Object(fields) = &opts.hcm {
        let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
        for (k, v) in fields {
            hcm[k] = v.clone();
        }
    }
    listener
}
