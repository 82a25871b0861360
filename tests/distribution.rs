//! The three ways certbound reaches a proxy, each with real parts: the OCI image (built by
//! wasm/build-oci.sh, pushed to a real registry, pulled back with skopeo, run in Envoy), Envoy's own
//! remote download with a sha256, and the Istio WasmPlugin's pluginConfig through certbound's parser.
//!
//! Needs `skopeo` and `docker-registry` on PATH (`make setup-dist` installs them); without them the
//! registry test fails, it does not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::http::{Reply as ServerReply, Request, Server};
use common::{
    bound_claims, counter, filter_config, get, opaque_token, repo, stats_matching, thumbprint,
    wasm_path, Behaviour, Envoy, EnvoyOpts, Format, Introspection, RemoteModule, Upstream,
};

const CLIENT: &str = "example.client";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ISTIO_CLUSTER: &str = "outbound|443||login.example.com";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The built module; a clear failure if it is missing.
fn built_wasm() -> (PathBuf, Vec<u8>) {
    let path = wasm_path();
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the filter {} is missing ({e}): `make build`, or set CERTBOUND_WASM",
            path.display()
        )
    });
    (path, bytes)
}

/// A scratch directory, removed on success and kept (and named) when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "certbound-dist-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("(kept {})", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a command, returns its stdout; panics with its output if it fails or cannot start.
fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails (never skips) when a tool the distribution tests need is not installed.
fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "'{tool}' is not on PATH: run `make setup-dist` (apt-get install skopeo docker-registry)"
    );
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// An OCI image layout on disk, read the way a client reads it.
struct Layout(PathBuf);

impl Layout {
    fn index(&self) -> Value {
        read_json(&self.0.join("index.json"))
    }

    /// The digest of the one manifest in index.json ("sha256:…").
    fn manifest_digest(&self) -> String {
        let index = self.index();
        let manifests = index["manifests"].as_array().expect("index.manifests");
        assert_eq!(manifests.len(), 1, "index.json: {index}");
        manifests[0]["digest"]
            .as_str()
            .expect("manifest digest")
            .to_string()
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.0.join("blobs/sha256").join(hex)
    }

    /// A blob's bytes, checked against its digest.
    fn blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&bytes)),
            digest,
            "blob content does not match its digest"
        );
        bytes
    }

    fn manifest(&self) -> Value {
        let bytes = self.blob(&self.manifest_digest());
        serde_json::from_slice(&bytes).expect("manifest is JSON")
    }

    fn config(&self) -> Value {
        let manifest = self.manifest();
        let digest = manifest["config"]["digest"]
            .as_str()
            .expect("config digest");
        serde_json::from_slice(&self.blob(digest)).expect("config is JSON")
    }
}

/// wasm/build-oci.sh WASM OUT; returns the layout and the digest the script printed.
fn build_oci(wasm: &Path, out: &Path) -> (Layout, String) {
    let printed = run(Command::new(repo().join("wasm/build-oci.sh"))
        .arg(wasm)
        .arg(out)
        .current_dir(repo()));
    let layout = Layout(out.to_path_buf());
    (layout, printed.trim().to_string())
}

/// The checks a compat-variant certbound image must pass; returns the layer digest.
fn assert_compat_image(layout: &Layout, wasm: &[u8]) -> String {
    let manifest = layout.manifest();
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(
        layers.len(),
        1,
        "the compat variant has one layer: {manifest}"
    );
    assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE, "{manifest}");
    let notes = &manifest["annotations"];
    assert_eq!(notes["module.wasm.image/variant"], "compat", "{manifest}");
    assert_eq!(notes["org.opencontainers.image.version"], VERSION);
    assert_eq!(notes["certbound.wasm.sha256"], sha256_hex(wasm).as_str());
    let revision = notes["org.opencontainers.image.revision"]
        .as_str()
        .expect("revision annotation");
    assert!(
        revision == "unknown" || revision.len() >= 40,
        "revision {revision:?}"
    );
    let labels = &layout.config()["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["certbound.wasm.sha256"], sha256_hex(wasm).as_str());
    assert_eq!(labels["org.opencontainers.image.revision"], revision);
    layers[0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string()
}

/// Unpacks a tar+gzip layer blob into `dir` with tar(1); returns the entry names.
fn unpack_layer(blob: &Path, dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir).expect("create unpack dir");
    let listing = run(Command::new("tar").arg("-tzf").arg(blob));
    run(Command::new("tar").arg("-xzf").arg(blob).arg("-C").arg(dir));
    listing.lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// The OCI image

#[test]
fn oci_image_is_compat_variant_and_reproducible() {
    let (wasm_file, wasm) = built_wasm();
    let tmp = TempDir::new("repro");
    let (first, printed) = build_oci(&wasm_file, &tmp.join("first"));
    assert_eq!(
        printed,
        first.manifest_digest(),
        "the script prints the manifest digest"
    );
    let layer = assert_compat_image(&first, &wasm);
    assert_eq!(
        first.index()["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );

    // The same module from another path with another mtime: the file's metadata must not leak in.
    let copy = tmp.join("elsewhere.wasm");
    fs::write(&copy, &wasm).expect("copy module");
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&copy));
    let (second, _) = build_oci(&copy, &tmp.join("second"));
    assert_eq!(
        first.manifest_digest(),
        second.manifest_digest(),
        "two builds of the same module give different image digests"
    );
    assert_eq!(
        fs::read(first.0.join("index.json")).unwrap(),
        fs::read(second.0.join("index.json")).unwrap()
    );

    let files = unpack_layer(&first.blob_path(&layer), &tmp.join("unpacked"));
    assert_eq!(files, ["plugin.wasm"], "the layer holds plugin.wasm only");
    assert_eq!(fs::read(tmp.join("unpacked/plugin.wasm")).unwrap(), wasm);
}

/// The registry, a child process killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    /// Debian's docker-registry on a free loopback port, its config and storage in `dir`.
    fn start(dir: &Path) -> Registry {
        require_tool("docker-registry");
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).expect("registry storage");
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = common::free_port();
            let config = dir.join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog: {{ disabled: true }}\n\
                     storage:\n  filesystem: {{ rootdirectory: {} }}\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: certbound-test-only\n",
                    storage.display()
                ),
            )
            .expect("write registry config");
            let log = dir.join("registry.log");
            let out = fs::File::create(&log).expect("registry log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run docker-registry: {e}"));
            let mut registry = Registry { child, port, log };
            if registry.wait_ready() {
                return registry;
            }
            last_log = fs::read_to_string(&registry.log).unwrap_or_default();
        }
        panic!("docker-registry did not start\n{last_log}");
    }

    /// GET /v2/ answers 200 (the registry API is up).
    fn wait_ready(&mut self) -> bool {
        let http = common::plain_client(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let url = format!("http://127.0.0.1:{}/v2/", self.port);
            if http.get(url).send().is_ok_and(|r| r.status() == 200) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- registry log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn skopeo(args: &[&str]) -> String {
    // --insecure-policy: no dependency on the machine's /etc/containers/policy.json.
    run(Command::new("skopeo").arg("--insecure-policy").args(args))
}

#[test]
fn registry_round_trip_then_envoy_serves_with_the_pulled_module() {
    let (wasm_file, wasm) = built_wasm();
    require_tool("skopeo");
    let tmp = TempDir::new("registry");
    let (built, _) = build_oci(&wasm_file, &tmp.join("built"));
    let registry = Registry::start(&tmp.join("registry"));
    let reference = format!("docker://127.0.0.1:{}/certbound:{VERSION}", registry.port);

    let src = format!("oci:{}:{VERSION}", tmp.join("built").display());
    skopeo(&["copy", "--dest-tls-verify=false", &src, &reference]);
    let pulled_dir = tmp.join("pulled");
    let dst = format!("oci:{}:{VERSION}", pulled_dir.display());
    skopeo(&["copy", "--src-tls-verify=false", &reference, &dst]);

    // The registry serves the manifest byte for byte: its digest is the one the build printed, which
    // is the `sha256` an Istio WasmPlugin with an oci:// URL pins.
    let pulled = Layout(pulled_dir);
    assert_eq!(pulled.manifest_digest(), built.manifest_digest());
    let inspected: Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &reference]))
            .expect("skopeo inspect JSON");
    assert_eq!(inspected["Digest"], built.manifest_digest().as_str());
    assert_eq!(
        inspected["Labels"]["org.opencontainers.image.version"],
        VERSION
    );

    let layer = assert_compat_image(&pulled, &wasm);
    let unpacked = tmp.join("unpacked");
    let files = unpack_layer(&pulled.blob_path(&layer), &unpacked);
    assert_eq!(files, ["plugin.wasm"]);
    let plugin = unpacked.join("plugin.wasm");
    assert!(
        fs::read(&plugin).unwrap() == wasm,
        "plugin.wasm from the registry differs from {}",
        wasm_file.display()
    );
    drop(registry);

    // Envoy runs the pulled module: a request without a token is refused by the filter, a request
    // with a token bound to the client's certificate reaches the API.
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Jwt);
    let mut opts = EnvoyOpts::new(filter_config(Format::Jwt), idp.port(), upstream.port());
    opts.wasm = plugin;
    let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    let client = envoy.client(CLIENT);

    let denied = get(&client, &envoy, "/api/transactions", None);
    assert_eq!(denied.status, 401, "{denied:?}");
    assert_eq!(
        denied.header("www-authenticate"),
        Some(r#"Bearer realm="certbound""#)
    );
    assert_eq!(upstream.count(), 0);

    let token = opaque_token("pulled");
    idp.register(
        &token,
        Behaviour::Active(bound_claims(&thumbprint(CLIENT), "transactions")),
    );
    let allowed = get(&client, &envoy, "/api/transactions", Some(&token));
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(upstream.count(), 1);
    assert_eq!(envoy.counter("certbound.requests_allowed"), 1);
}

// ---------------------------------------------------------------------------------------------
// Envoy's remote download (envoy/envoy-remote.yaml)

/// Serves `body` at GET /certbound.wasm and counts the downloads.
fn module_server(body: Vec<u8>) -> (Server, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let body = Arc::new(body);
    let server = Server::start(Arc::new(move |req: &Request| {
        if req.method == "GET" && req.path == "/certbound.wasm" {
            counted.fetch_add(1, Ordering::SeqCst);
            ServerReply::new(200, "application/wasm", body.as_slice())
        } else {
            ServerReply::empty(404)
        }
    }));
    (server, fetches)
}

#[test]
fn envoy_loads_the_module_from_a_remote_http_source() {
    let (_, wasm) = built_wasm();
    let (server, fetches) = module_server(wasm.clone());
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Jwt);
    let mut opts = EnvoyOpts::new(filter_config(Format::Jwt), idp.port(), upstream.port());
    opts.wasm = PathBuf::from("/nonexistent/the-module-must-come-from-the-server.wasm");
    opts.remote = Some(RemoteModule {
        port: server.port(),
        sha256: sha256_hex(&wasm),
        num_retries: 1,
    });
    let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one download, no retry");
    let wasm_stats = stats_matching(envoy.admin_port, r"^wasm\.");
    assert_eq!(
        counter(&wasm_stats, "wasm.remote_load_fetch_successes"),
        1,
        "{wasm_stats:?}"
    );

    let reply = get(&envoy.client(CLIENT), &envoy, "/api/transactions", None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="certbound""#)
    );
    assert_eq!(envoy.counter("certbound.requests_denied.missing_token"), 1);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn envoy_refuses_a_remote_module_with_the_wrong_sha256() {
    let (_, wasm) = built_wasm();
    let (server, fetches) = module_server(wasm.clone());
    let upstream = Upstream::start();
    let idp = Introspection::start(Format::Jwt);
    let mut opts = EnvoyOpts::new(filter_config(Format::Jwt), idp.port(), upstream.port());
    opts.remote = Some(RemoteModule {
        port: server.port(),
        sha256: sha256_hex(b"a module that is not the one served"),
        num_retries: 2,
    });
    // Envoy 1.40 starts anyway: the fetch ends (after the retries) before the listener is ready,
    // the plugin "configured to fail closed failed to load", and the listener serves without it.
    let envoy = Envoy::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        3,
        "the first download and num_retries more"
    );
    let wasm_stats = stats_matching(envoy.admin_port, r"^wasm\.");
    assert_eq!(
        counter(&wasm_stats, "wasm.remote_load_fetch_failures"),
        1,
        "{wasm_stats:?}"
    );
    assert_eq!(
        counter(&wasm_stats, "wasm.remote_load_fetch_successes"),
        0,
        "{wasm_stats:?}"
    );
    assert_eq!(
        counter(&wasm_stats, "wasm.envoy.wasm.runtime.v8.created"),
        0,
        "no VM was created"
    );

    let token = opaque_token("wrong-sha");
    idp.register(
        &token,
        Behaviour::Active(bound_claims(&thumbprint(CLIENT), "transactions")),
    );
    let client = envoy.client(CLIENT);
    for auth in [None, Some(token.as_str())] {
        let reply = get(&client, &envoy, "/api/transactions", auth);
        assert_eq!(reply.status, 503, "fail closed: {reply:?}");
    }
    assert_eq!(
        upstream.count(),
        0,
        "a request reached the API without the filter"
    );
    assert_eq!(idp.calls(), 0, "the filter cannot have run");
}

// ---------------------------------------------------------------------------------------------
// Release and the Istio WasmPlugin

#[test]
fn release_pins_the_image_digest_and_the_module_sha256() {
    let (wasm_file, wasm) = built_wasm();
    let tmp = TempDir::new("release");
    let dist = tmp.join("dist");
    run(Command::new(repo().join("wasm/release.sh"))
        .arg(&wasm_file)
        .arg(&dist)
        .env("REGISTRY", "registry.test:5000/team")
        .current_dir(repo()));
    assert_eq!(fs::read(dist.join("certbound.wasm")).unwrap(), wasm);
    let image = Layout(dist.join("oci"));
    assert_compat_image(&image, &wasm);

    let plugin = fs::read_to_string(dist.join("wasmplugin.yaml")).unwrap();
    let digest = image.manifest_digest();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        plugin.contains(&format!("  sha256: \"{hex}\"\n")),
        "dist/wasmplugin.yaml does not pin the image digest {hex}:\n{plugin}"
    );
    assert!(plugin.contains(&format!(
        "  url: oci://registry.test:5000/team/certbound:{VERSION}\n"
    )));
    let remote = fs::read_to_string(dist.join("envoy-remote.yaml")).unwrap();
    assert!(
        remote.contains(&format!("sha256: \"{}\"", sha256_hex(&wasm))),
        "dist/envoy-remote.yaml does not pin the module's sha256"
    );

    let sums = run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dist));
    for file in [
        "certbound.wasm",
        "wasmplugin.yaml",
        "envoy-remote.yaml",
        "oci/index.json",
    ] {
        assert!(
            sums.contains(&format!("{file}: OK")),
            "{file} not in SHA256SUMS:\n{sums}"
        );
    }
}

/// The JSON block after `pluginConfig:` in the manifest (kept in JSON form; check_wasmplugin.py
/// checks that YAML reads the same value).
fn plugin_config(manifest: &str) -> Value {
    let start = manifest
        .find("pluginConfig:")
        .expect("no pluginConfig in wasm/wasmplugin.yaml")
        + "pluginConfig:".len();
    serde_json::Deserializer::from_str(&manifest[start..])
        .into_iter::<Value>()
        .next()
        .expect("nothing after pluginConfig:")
        .expect("pluginConfig is not a JSON block (keep it in JSON form)")
}

#[test]
fn wasmplugin_config_is_accepted_by_certbounds_parser() {
    let path = repo().join("wasm/wasmplugin.yaml");
    let manifest = fs::read_to_string(&path).expect("read wasm/wasmplugin.yaml");
    let config = plugin_config(&manifest);
    let raw = serde_json::to_vec(&config).unwrap();
    // The secret comes from the VM environment the manifest's vmConfig.env names (HOST).
    let variable = config["introspection"]["client_secret_env"]
        .as_str()
        .expect("the secret comes from the VM environment");
    let env_line = format!("- name: {variable}");
    assert!(
        manifest.contains(&env_line) && manifest.contains("valueFrom: HOST"),
        "vmConfig.env does not pass {variable}"
    );
    let env = |name: &str| (name == variable).then(|| "from-the-gateway".to_string());
    if let Err(e) = certbound::config::parse_with_env(&raw, &env) {
        panic!("certbound rejects the pluginConfig of wasm/wasmplugin.yaml: {e:?}");
    }
    // The dispatched calls go through the cluster Istio makes for the identity server's ServiceEntry.
    assert_eq!(config["introspection"]["cluster"], ISTIO_CLUSTER);
    assert_eq!(config["jwt"]["jwks"]["cluster"], ISTIO_CLUSTER);
    // The image tag follows the crate version.
    let url_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("url:"))
        .expect("url line");
    assert!(
        url_line
            .trim_end()
            .ends_with(&format!("/certbound:{VERSION}")),
        "{url_line:?} is not tagged {VERSION}"
    );
}
