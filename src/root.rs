//! The root context: parses the configuration once, defines the metrics, creates HTTP contexts.

use crate::cache::{KeyDeriver, LocalCache, TokenKey};
use crate::config::{self, Config};
use crate::host::Metrics;
use crate::http::{Http, Waiter};
use crate::jwks::KeySet;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Entries this VM keeps for itself in front of shared data.
const LOCAL_ENTRIES: usize = 1024;

/// What every HTTP context of this VM (one worker) shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// Turns a token into its cache key (namespace and configuration fingerprint absorbed once).
    pub key_deriver: KeyDeriver,
    pub local: RefCell<LocalCache>,
    /// Tokens being introspected right now, and the requests waiting for the answer: one call
    /// per token per worker, however many requests carry it at once.
    pub inflight: RefCell<HashMap<TokenKey, Vec<Waiter>>>,
    /// This worker's parsed copy of the key set and when it was fetched.
    pub keys: RefCell<Option<(u64, Rc<KeySet>)>>,
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
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
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        let metrics = match Metrics::define() {
            Ok(m) => m,
            Err(status) => {
                log::error!("cannot define metrics: {status:?}");
                return false;
            }
        };
        log::info!(
            "certbound {} configured: format {:?}, configuration fingerprint {}",
            env!("CARGO_PKG_VERSION"),
            config.introspection.format,
            config.fingerprint
        );
        let local = RefCell::new(LocalCache::new(
            LOCAL_ENTRIES.min(config.cache.max_entries as usize),
        ));
        let key_deriver = KeyDeriver::new(&config.cache.namespace, &config.fingerprint);
        self.shared = Some(Rc::new(Shared {
            config,
            metrics,
            key_deriver,
            local,
            inflight: RefCell::default(),
            keys: RefCell::default(),
        }));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
