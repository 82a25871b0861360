//! The example system for the end-to-end tests: example/system.sh starts and stops each service
//! (the same script `make demo` uses), on free ports, with a run directory of its own.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, certs_dir, free_port, repo};

/// Runs `f` and checks that it did not reach the API (the API's own request counter).
pub fn without_reaching_the_api<T>(system: &System, what: &str, f: impl FnOnce() -> T) -> T {
    let before = system.api_requests();
    let result = f();
    assert_eq!(
        system.api_requests(),
        before,
        "{what}: the request reached the API"
    );
    result
}

/// `var` as a path, else `default` below the repository.
fn env_path(var: &str, default: &str) -> PathBuf {
    common::env_path(var, repo().join(default))
}

/// Fails the test with a message that says how to get what is missing.
fn require(path: &Path, what: &str, how: &str) {
    assert!(
        path.exists(),
        "{what} not found at {}: {how}",
        path.display()
    );
}

#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub front: u16,
    pub idsvr: u16,
    pub api: u16,
    pub admin: u16,
    pub formats: u16,
    pub formats_admin: u16,
    pub api_admin: u16,
    pub sidecar: u16,
    pub sidecar_haproxy: u16,
    pub sidecar_nginx: u16,
    pub sidecar_admin: u16,
    /// HAProxy and nginx in front of the sidecar (tests/e2e/terminators.rs).
    pub haproxy: u16,
    pub nginx: u16,
    /// PROXY=nginx (tests/e2e_nginx.rs): the certbound gateway in NGINX and its loopback hop.
    pub nginx_gateway: u16,
    pub nginx_egress: u16,
}

pub struct System {
    pub ports: Ports,
    pub run_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl System {
    /// Prepares (does not start) a system on free ports.
    pub fn new() -> System {
        let envoy = env_path("ENVOY_BIN", ".venv/bin/envoy");
        let api = env_path("API_BIN", "target/debug/certbound-example-api");
        let wasm = env_path(
            "CERTBOUND_WASM",
            "target/wasm32-wasip1/release/certbound.wasm",
        );
        require(&envoy, "Envoy", "run `make setup` (or set ENVOY_BIN)");
        require(
            &api,
            "the example API",
            "run `cargo build -p certbound-example-api` (or set API_BIN)",
        );
        require(&wasm, "certbound.wasm", "run `make build`");
        require(
            &certs_dir().join("root.pem"),
            "the example certificates",
            "run `make certs`",
        );
        require(
            &repo().join("example/idsvr/node_modules/oidc-provider"),
            "the identity server's npm packages",
            "run `npm ci` in example/idsvr (`make test` does)",
        );
        // The Envoy configurations name the module by its path relative to the repository root.
        assert_eq!(
            wasm.canonicalize().ok(),
            repo().join("target/wasm32-wasip1/release/certbound.wasm").canonicalize().ok(),
            "envoy/*.yaml load target/wasm32-wasip1/release/certbound.wasm; CERTBOUND_WASM points elsewhere"
        );

        let ports = Ports {
            front: free_port(),
            idsvr: free_port(),
            api: free_port(),
            admin: free_port(),
            formats: free_port(),
            formats_admin: free_port(),
            api_admin: free_port(),
            sidecar: free_port(),
            sidecar_haproxy: free_port(),
            sidecar_nginx: free_port(),
            sidecar_admin: free_port(),
            haproxy: free_port(),
            nginx: free_port(),
            nginx_gateway: free_port(),
            nginx_egress: free_port(),
        };
        let run_dir = std::env::temp_dir().join(format!("certbound-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).expect("create the run directory");
        let s = |v: &dyn ToString| v.to_string();
        let env = vec![
            ("CERTBOUND_RUN_DIR".into(), s(&run_dir.display())),
            ("CERTBOUND_PARENT_PID".into(), s(&std::process::id())),
            ("FRONT_PORT".into(), s(&ports.front)),
            ("IDSVR_PORT".into(), s(&ports.idsvr)),
            ("API_PORT".into(), s(&ports.api)),
            ("ADMIN_PORT".into(), s(&ports.admin)),
            ("FORMATS_PORT".into(), s(&ports.formats)),
            ("FORMATS_ADMIN_PORT".into(), s(&ports.formats_admin)),
            ("API_ADMIN_PORT".into(), s(&ports.api_admin)),
            ("SIDECAR_PORT".into(), s(&ports.sidecar)),
            ("SIDECAR_HAPROXY_PORT".into(), s(&ports.sidecar_haproxy)),
            ("SIDECAR_NGINX_PORT".into(), s(&ports.sidecar_nginx)),
            ("SIDECAR_ADMIN_PORT".into(), s(&ports.sidecar_admin)),
            ("NGINX_GATEWAY_PORT".into(), s(&ports.nginx_gateway)),
            ("NGINX_EGRESS_PORT".into(), s(&ports.nginx_egress)),
            ("ENVOY_BIN".into(), s(&envoy.display())),
            ("API_BIN".into(), s(&api.display())),
            ("CERTS_DIR".into(), s(&certs_dir().display())),
            (
                "IDSVR_STATE_DIR".into(),
                s(&run_dir.join("idsvr-state").display()),
            ),
            ("READY_TIMEOUT".into(), "60".into()),
        ];
        System {
            ports,
            run_dir,
            env,
        }
    }

    fn script(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(repo().join("example/system.sh"));
        cmd.args(args).current_dir(repo());
        // The defaults of the identity server must hold unless a test asks otherwise.
        cmd.env_remove("IDSVR_ACCESS_TOKEN_TTL")
            .env_remove("INTROSPECT_CLIENT_SECRET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run example/system.sh")
    }

    /// `system.sh start SERVICE`: returns once it is ready; panics with its log otherwise.
    pub fn start(&self, service: &str, extra_env: &[(&str, &str)]) {
        let out = self.script(&["start", service], extra_env);
        assert!(
            out.status.success(),
            "example/system.sh start {service} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self, service: &str) {
        let out = self.script(&["stop", service], &[]);
        assert!(
            out.status.success(),
            "example/system.sh stop {service} failed: {out:?}"
        );
    }

    /// Runs the partner client of `make demo` (example/client.sh) against this system and checks
    /// that it printed what it prints when every step succeeds (tests/client-output.txt, which the
    /// compose and demo tests read too).
    pub fn run_demo_client(&self) {
        let out = Command::new(repo().join("example/client.sh"))
            .current_dir(repo())
            .env("FRONT_PORT", self.ports.front.to_string())
            .env("CERTS_DIR", certs_dir())
            .output()
            .expect("run example/client.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "example/client.sh failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            include_str!("../client-output.txt")
                .lines()
                .collect::<Vec<_>>(),
            "example/client.sh output"
        );
    }

    pub fn log(&self, service: &str) -> String {
        fs::read_to_string(self.run_dir.join(format!("{service}.log"))).unwrap_or_default()
    }

    /// The API's own count of the requests that reached it (GET /stats on its admin port).
    pub fn api_stats(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/stats", self.ports.api_admin);
        let text = plain_client()
            .get(url)
            .send()
            .and_then(|r| r.text())
            .expect("API /stats");
        serde_json::from_str(&text).expect("API /stats is JSON")
    }

    pub fn api_requests(&self) -> u64 {
        self.api_stats()["requests"]
            .as_u64()
            .expect("requests counter")
    }

    /// Envoy's counters (`/stats`) whose names contain `filter`, of the main front proxy or the formats one.
    pub fn envoy_stats(&self, formats: bool, filter: &str) -> HashMap<String, u64> {
        let port = if formats {
            self.ports.formats_admin
        } else {
            self.ports.admin
        };
        common::stats_matching(port, filter)
    }

    pub fn envoy_counter(&self, formats: bool, suffix: &str) -> u64 {
        self.envoy_stats(formats, suffix)
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let out = self.script(&["down"], &[]);
        if std::thread::panicking() {
            for service in ["idsvr", "api", "envoy", "envoy-formats"] {
                let log = self.log(service);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {service} log (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            eprintln!("--- logs kept in {}", self.run_dir.display());
        } else if out.status.success() {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

pub fn plain_client() -> reqwest::blocking::Client {
    common::plain_client(Duration::from_secs(10))
}
