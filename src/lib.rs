//! certbound: certificate-bound phantom-token enforcement as a proxy-wasm HTTP filter.
//!
//! `docs/architecture.md` says which module owns what. Only this file, `host.rs` and the context
//! adapters (`root.rs`, `http.rs`) use the proxy-wasm SDK; everything else is plain Rust.
//!
//! The SDK exports every proxy-wasm callback; `make build` keeps only the ones certbound implements
//! (the Makefile's `WASM_EXPORTS`), so that Envoy does not call into the module for the others.
//! Implementing another callback means adding its export there (a test checks the two agree).
pub mod binding;
pub mod cache;
pub mod certificate;
pub use certbound_config as config;
pub use certbound_jose::{jwks, jwt};
pub mod decision;
pub mod deny;
#[cfg(any(test, feature = "test-support"))]
pub mod fake_host;
pub mod feed;
pub mod flow;
pub mod headers;
pub mod host;
pub mod http;
pub mod introspection;
pub mod metrics;
pub mod path;
pub mod revocation;
pub mod root;
pub mod token;
pub mod worker;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(host::ProxyHost))
    });
}}
