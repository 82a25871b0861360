//! The root context: parses the configuration once, defines the metrics, creates HTTP contexts.

use crate::config::{self, Config};
use crate::host::Metrics;
use crate::http::Http;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    state: Option<(Rc<Config>, Rc<Metrics>)>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                // The error names a field; it never echoes the configuration's values.
                log::error!("certbound: invalid configuration: {e}");
                return false;
            }
        };
        let metrics = match Metrics::define() {
            Ok(m) => m,
            Err(status) => {
                log::error!("certbound: cannot define metrics: {status:?}");
                return false;
            }
        };
        log::info!(
            "certbound {} configured: format {:?}, configuration fingerprint {}",
            env!("CARGO_PKG_VERSION"),
            config.introspection.format,
            config.fingerprint
        );
        self.state = Some((Rc::new(config), Rc::new(metrics)));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let (config, metrics) = self.state.clone().unzip();
        Some(Box::new(Http::new(config, metrics)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
