//! The built module's exports: the Makefile keeps exactly the callbacks certbound implements.
//! (That `make build` is idempotent is checked by `make test` itself: `check-build`.)

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
/// host writes answers with, VM start, context creation and deletion.
const ALWAYS: [&str; 7] = [
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_context_create",
    "proxy_on_delete",
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
