//! The root context: parses the configuration once, defines the counters, creates the HTTP
//! contexts, and on its timer refreshes the worker's clock, follows the revocation feed
//! (`crate::feed`) and hands the metric tally to the host (so that a cache hit makes neither
//! a clock nor a counter host call).

use crate::config;
use crate::feed;
use crate::flow::CallAnswer;
use crate::host::{Host, Level, ProxyHost};
use crate::http::Http;
use crate::metrics;
use crate::worker::{Proxy, Worker};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

/// How often the clock is read and the counters are handed over. The clock has a resolution of
/// seconds; counters show in `/stats` at most this late.
pub const TICK_MS: u64 = 100;

pub struct Root<H: Host> {
    host: H,
    worker: Option<Rc<Worker>>,
    /// The host's id of the counter in each tally slot (`None`: the host refused it).
    counters: Vec<Option<u32>>,
    /// The feed-lag gauge, with a revocation feed.
    lag_gauge: Option<u32>,
}

impl<H: Host + Clone> Root<H> {
    pub fn new(host: H) -> Self {
        Root {
            host,
            worker: None,
            counters: Vec::new(),
            lag_gauge: None,
        }
    }

    /// Reads and checks the plugin configuration. False refuses it (the proxy then fails the
    /// filter's start, and an unconfigured filter refuses every request).
    pub fn configure(&mut self) -> bool {
        let raw = self.host.plugin_configuration();
        let config = match config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                // The error names a field; it never echoes the configuration's values.
                self.host
                    .log(Level::Error, &format!("invalid configuration: {e}"));
                return false;
            }
        };
        let counters: Vec<Option<u32>> = metrics::names()
            .map(|n| self.host.define_counter(&n))
            .collect();
        if counters.iter().any(Option::is_none) {
            self.host.log(Level::Error, "cannot define the counters");
            return false;
        }
        let lag_gauge = match &config.revocation {
            Some(_) => match self.host.define_gauge(metrics::FEED_LAG_GAUGE) {
                Some(id) => Some(id),
                None => {
                    self.host
                        .log(Level::Error, "cannot define the feed-lag gauge");
                    return false;
                }
            },
            None => None,
        };
        let proxy = self.host.proxy();
        self.host.log(
            Level::Info,
            &format!(
                "certbound {} configured in {}: format {}, configuration fingerprint {}",
                env!("CARGO_PKG_VERSION"),
                proxy.name(),
                config.introspection.format.name(),
                config.fingerprint
            ),
        );
        if proxy == Proxy::Nginx {
            self.host.log(
                Level::Info,
                "ngx_wasm_module cannot resume a request from another's context: requests that \
                 carry the same uncached token each make their own introspection call",
            );
        }
        let worker = Worker::new(config, proxy);
        worker.clock.set(self.host.now());
        if !self.host.set_tick_period_ms(TICK_MS) {
            self.host.log(Level::Error, "cannot start the timer");
            return false;
        }
        self.worker = Some(Rc::new(worker));
        self.counters = counters;
        self.lag_gauge = lag_gauge;
        true
    }

    /// The timer: the clock for the next requests, the revocation feed, and the counts since the
    /// last tick.
    pub fn tick(&self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now_ms = self.host.now_ms();
        worker.clock.set(now_ms / 1000);
        let Ok(mut st) = worker.state.try_borrow_mut() else {
            return;
        };
        if let Some(call) = feed::on_tick(&worker.config, &mut st, &self.host, now_ms) {
            match self.host.dispatch(&call) {
                Ok(_) => st.tally.count(call.kind.metric()),
                Err(status) => {
                    let why = format!("revocation {:?} dispatch failed: {status}", call.kind);
                    self.host.log(Level::Warn, &why);
                    feed::on_dispatch_failed(&worker.config, &mut st, &self.host, now_ms);
                }
            }
        }
        if let (Some(id), Some(lag)) = (self.lag_gauge, st.revocations.lag_ms) {
            self.host.set_gauge(id, lag);
        }
        if st.tally.is_empty() {
            return;
        }
        let counts = st.tally.take();
        for (id, n) in self.counters.iter().zip(counts) {
            if let (Some(id), 1..) = (id, n) {
                self.host.increment_counter(*id, n);
            }
        }
    }

    /// The answer to the root context's call (`headers` is 0 when the call failed).
    pub fn on_call_response(&self, headers: usize, body_size: usize) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut st) = worker.state.try_borrow_mut() else {
            return;
        };
        let answer = if headers == 0 {
            CallAnswer::failed()
        } else {
            let limit = feed::answer_limit(&worker.config, &st);
            self.host.call_answer(body_size, limit)
        };
        let now_ms = self.host.now_ms();
        let lines = feed::on_answer(&worker.config, &mut st, &self.host, answer, now_ms);
        for line in lines {
            self.host.log(Level::Warn, &line);
        }
    }

    pub fn http_context(&self, context_id: u32) -> Http<H> {
        Http::new(context_id, self.host.clone(), self.worker.clone())
    }
}

impl Context for Root<ProxyHost> {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        self.on_call_response(headers, body);
    }
}

impl RootContext for Root<ProxyHost> {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.configure()
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.http_context(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
