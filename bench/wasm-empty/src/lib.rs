//! An empty proxy-wasm HTTP filter: the cost any wasm filter pays in Envoy's V8 runtime.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(Empty)
    });
}}

/// Every callback keeps its default: `Action::Continue`.
struct Empty;

impl Context for Empty {}

impl HttpContext for Empty {}
