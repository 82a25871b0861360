//! The module's shape: the Makefile exports exactly the callbacks certbound implements, the files
//! of `src/` import no cycle, and only the entry point, the host seam and the context adapters use
//! the proxy-wasm SDK. (That `make build` is idempotent is checked by `make test`: `check-build`.)

// clippy.toml allows these in #[test] functions; the helpers of a test crate need it too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The names in the Makefile's `WASM_EXPORTS` (a `:=` assignment continued with backslashes).
fn makefile_exports() -> BTreeSet<String> {
    let makefile = read("Makefile");
    let start = makefile
        .find("WASM_EXPORTS   :=")
        .expect("the Makefile assigns WASM_EXPORTS");
    let mut names = BTreeSet::new();
    for line in makefile[start..].lines() {
        let words = line.trim_start_matches("WASM_EXPORTS   :=");
        names.extend(
            words
                .split_whitespace()
                .filter(|w| *w != "\\")
                .map(String::from),
        );
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    names
}

/// The SDK trait methods a context adapter may implement, and the export each is called through.
const CALLBACKS: [(&str, &str); 17] = [
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_receive"),
    ("on_done", "proxy_on_done"),
    ("on_log", "proxy_on_log"),
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_downstream_data", "proxy_on_downstream_data"),
    ("on_upstream_data", "proxy_on_upstream_data"),
];

/// What every module needs whatever it implements: memory, the ABI version, the allocator the
/// host writes answers with, VM start, context creation and deletion; and the callbacks NGINX's
/// ngx_wasm_module calls without checking that they are exported (its worker crashes without them;
/// the SDK's default bodies let the response go on).
const ALWAYS: [&str; 10] = [
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_context_create",
    "proxy_on_delete",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_log",
];

/// The exports of the SDK callbacks that the adapters' trait impls define.
fn implemented_exports() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
    for file in ["src/root.rs", "src/http.rs"] {
        let source = read(file);
        // Only the SDK trait impls (`impl RootContext for`, `impl HttpContext for`, ...).
        for block in source.split("\nimpl ").skip(1) {
            let header = block.lines().next().unwrap_or_default();
            if !["Context for", "RootContext for", "HttpContext for"]
                .iter()
                .any(|t| header.starts_with(t))
            {
                continue;
            }
            let body = block.split("\n}\n").next().unwrap_or_default();
            for line in body.lines() {
                let Some(rest) = line.trim_start().strip_prefix("fn ") else {
                    continue;
                };
                let name = rest.split('(').next().unwrap_or_default();
                if let Some((_, export)) = CALLBACKS.iter().find(|(m, _)| *m == name) {
                    names.insert(export.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn the_makefile_exports_exactly_the_callbacks_certbound_implements() {
    let exported = makefile_exports();
    let implemented = implemented_exports();
    // The adapters define at least the callbacks a request needs.
    for needed in [
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_request_headers",
        "proxy_on_http_call_response",
        "proxy_on_done",
    ] {
        assert!(implemented.contains(needed), "{needed} is not implemented?");
    }
    assert_eq!(
        exported, implemented,
        "WASM_EXPORTS in the Makefile must list the exports of the callbacks src/root.rs and \
         src/http.rs implement: a callback without its export is never called, an export without \
         its callback costs a call into the VM per request"
    );
}

/// `crate::<module>` names each file of `src/` uses (`use crate::a::…`, `crate::a::f(…)`).
fn imports(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in source.match_indices("crate::") {
        let rest = &source[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    // `use crate::{a, b}`.
    for (i, _) in source.match_indices("crate::{") {
        let list = &source[i + "crate::{".len()..];
        let list = &list[..list.find('}').unwrap_or(0)];
        out.extend(
            list.split(',')
                .map(|n| n.trim().split("::").next().unwrap_or_default().to_string()),
        );
    }
    out
}

/// The modules of `src/` (one file each, `src/flow/tests.rs` counting as `flow`), without tests.
fn modules() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(repo().join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let source = fs::read_to_string(&path).unwrap();
            // What only the tests use, and what comments mention, does not count.
            let source: String = source
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.push((name, source));
        }
    }
    out
}

#[test]
fn no_file_of_src_imports_one_that_imports_it_back() {
    let modules = modules();
    let names: BTreeSet<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let graph: Vec<(String, BTreeSet<String>)> = modules
        .iter()
        .map(|(n, s)| {
            let deps = imports(s)
                .into_iter()
                .filter(|d| names.contains(d) && d != n)
                .collect();
            (n.clone(), deps)
        })
        .collect();
    assert!(
        graph.iter().any(|(n, d)| n == "http" && d.contains("flow")),
        "{graph:?}"
    );
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        graph: &[(String, BTreeSet<String>)],
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(start) = path.iter().position(|p| p == node) {
            panic!(
                "an import cycle in src/: {} -> {node}",
                path[start..].join(" -> ")
            );
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        let deps = graph
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, d)| d.clone());
        for d in deps.unwrap_or_default() {
            visit(&d, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for (n, _) in &graph {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn only_the_entry_point_the_host_seam_and_the_adapters_use_the_sdk() {
    let allowed = ["lib", "host", "root", "http", "fake_host"];
    for (name, source) in modules() {
        if !allowed.contains(&name.as_str()) {
            assert!(
                !source.contains("proxy_wasm"),
                "src/{name}.rs uses proxy_wasm: host calls go through the Host trait (src/host.rs)"
            );
        }
    }
    for dir in ["config/src", "jose/src"] {
        for entry in fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let source = fs::read_to_string(&path).unwrap();
                assert!(
                    !source.contains("proxy_wasm"),
                    "{} uses proxy_wasm",
                    path.display()
                );
            }
        }
    }
}
