//! certbound: certificate-bound phantom-token enforcement as a proxy-wasm HTTP filter.
//!
//! The SDK exports every proxy-wasm callback; `make build` keeps only the ones certbound implements
//! (the Makefile's `WASM_EXPORTS`), so that Envoy does not call into the module for the others.
//! Implementing another callback means adding its export there.
pub mod binding;
pub mod cache;
pub mod config;
pub mod decision;
pub mod host;
pub mod http;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod response;
pub mod root;
pub mod token;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
