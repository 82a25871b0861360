//! An in-process proxy for native tests: a `Host` that keeps streams, shared data, calls and
//! counters in memory, and `Proxy`, which drives the real root and HTTP contexts through it as a
//! proxy would. Tests assert outcomes (replies, forwarded headers, calls, counters), never the
//! order of host calls.
//!
//! Test support only (unit tests, and the fuzz targets through feature `test-support`): it panics
//! on a broken invariant, which is what a test or the fuzzer should see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::binding::Thumbprint;
use crate::cache::SharedStore;
use crate::deny::Reply;
use crate::flow::{Call, CallAnswer};
use crate::headers::Headers;
use crate::host::{Host, Level};
use crate::http::Http;
use crate::root::Root;
use crate::worker::Proxy as ProxyKind;
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// One request as the proxy sees it.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    /// The request headers, as the upstream would get them.
    pub headers: Vec<(String, String)>,
    /// `connection.<name>` properties.
    pub properties: HashMap<String, Vec<u8>>,
    /// The request body received so far.
    pub body: Vec<u8>,
    pub replies: Vec<Reply>,
    /// Continued at once, or resumed after a pause.
    pub forwarded: bool,
    pub gone: bool,
}

/// The answer the proxy is delivering right now.
#[derive(Debug, Clone)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct State {
    pub configuration: Vec<u8>,
    pub now: u64,
    /// Milliseconds past `now`.
    pub ms: u64,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    /// Another worker's host whose shared data this one uses (`Proxy::beside`).
    pub shared_with: Option<FakeHost>,
    pub streams: HashMap<u32, Stream>,
    current: u32,
    /// Every call sent, with the context that sent it.
    pub calls: Vec<(u32, Call)>,
    /// Makes `dispatch` fail (an unknown cluster).
    pub refuse_dispatch: bool,
    delivery: Option<Delivery>,
    pub counter_names: Vec<String>,
    pub counters: HashMap<u32, u64>,
    pub gauges: HashMap<String, u64>,
    pub tick_ms: Option<u64>,
    pub logs: Vec<(Level, String)>,
    /// Acts as NGINX with ngx_wasm_module does where it differs from Envoy: `set_effective_context`
    /// is ignored (and answers Ok), a removed request header still reaches the upstream.
    pub nginx: bool,
    /// Every property path read, joined with dots.
    pub property_reads: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeHost(pub Rc<RefCell<State>>);

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeHost")
    }
}

impl FakeHost {
    fn with_stream<T>(&self, f: impl FnOnce(&mut Stream) -> T) -> Option<T> {
        let mut s = self.0.borrow_mut();
        let current = s.current;
        s.streams.get_mut(&current).map(f)
    }
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        if let Some(other) = self.0.borrow().shared_with.clone() {
            return other.get(key);
        }
        let s = self.0.borrow();
        s.shared.get(key).map(|(v, cas)| (v.clone(), Some(*cas)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        if let Some(other) = self.0.borrow().shared_with.clone() {
            return other.set(key, value, cas);
        }
        let mut s = self.0.borrow_mut();
        let current = s.shared.get(key).map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return false;
        }
        let next = current.unwrap_or(0) + 1;
        s.shared.insert(key.to_string(), (value.to_vec(), next));
        true
    }
}

impl Host for FakeHost {
    fn plugin_configuration(&self) -> Vec<u8> {
        self.0.borrow().configuration.clone()
    }

    fn now_ms(&self) -> u64 {
        let s = self.0.borrow();
        s.now * 1000 + s.ms
    }

    fn request_headers(&self) -> Headers {
        let pairs = self
            .with_stream(|st| st.headers.clone())
            .unwrap_or_default();
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        Headers::from_serialized(Headers::serialize(&pairs))
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        self.with_stream(|st| st.body.iter().take(size).copied().collect())
            .unwrap_or_default()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0.borrow_mut().property_reads.push(path.join("."));
        // `connection.<name>` by its name, others (`source.address`) by their whole path.
        let key = match path {
            ["connection", name] => name.to_string(),
            _ => path.join("."),
        };
        self.with_stream(|st| st.properties.get(&key).cloned())
            .flatten()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        let nginx = self.0.borrow().nginx;
        self.with_stream(|st| {
            if nginx {
                // As NGINX does with ngx_wasm_module: a removed header (and every copy but the
                // first of one set) is only marked, and proxy_pass forwards it anyway.
                let first = st
                    .headers
                    .iter_mut()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name));
                match (first, value) {
                    (Some(h), Some(v)) => h.1 = v.to_string(),
                    (None, Some(v)) => st.headers.push((name.to_string(), v.to_string())),
                    (_, None) => {}
                }
                return;
            }
            st.headers.retain(|(k, _)| k != name);
            if let Some(v) = value {
                st.headers.push((name.to_string(), v.to_string()));
            }
        })
        .is_some()
    }

    fn send_reply(&self, reply: &Reply) {
        self.with_stream(|st| st.replies.push(reply.clone()));
    }

    fn resume_request(&self) {
        self.with_stream(|st| st.forwarded = true);
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        let mut s = self.0.borrow_mut();
        if s.nginx {
            return true;
        }
        let alive = s.streams.get(&context_id).is_some_and(|st| !st.gone);
        if alive {
            s.current = context_id;
        }
        alive
    }

    fn proxy(&self) -> ProxyKind {
        if self.0.borrow().nginx {
            ProxyKind::Nginx
        } else {
            ProxyKind::Envoy
        }
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        let mut s = self.0.borrow_mut();
        if s.refuse_dispatch {
            return Err("BadArgument".into());
        }
        let current = s.current;
        s.calls.push((current, call.clone()));
        Ok(s.calls.len() as u32)
    }

    fn call_answer(&self, body_size: usize, max_body: usize) -> CallAnswer {
        // Asked only for an answer with headers, which `Proxy::answer` delivers.
        let Some(d) = self.0.borrow().delivery.clone() else {
            return CallAnswer::failed();
        };
        let header = |name: &str| {
            d.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        CallAnswer {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            body: (body_size <= max_body).then(|| d.body.clone()),
        }
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut s = self.0.borrow_mut();
        s.counter_names.push(name.to_string());
        Some(s.counter_names.len() as u32 - 1)
    }

    fn increment_counter(&self, id: u32, by: u64) {
        *self.0.borrow_mut().counters.entry(id).or_default() += by;
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        let mut s = self.0.borrow_mut();
        s.counter_names.push(name.to_string());
        Some(s.counter_names.len() as u32 - 1)
    }

    fn set_gauge(&self, id: u32, value: u64) {
        let mut s = self.0.borrow_mut();
        if let Some(name) = s.counter_names.get(id as usize).cloned() {
            s.gauges.insert(name, value);
        }
    }

    fn set_tick_period_ms(&self, ms: u64) -> bool {
        self.0.borrow_mut().tick_ms = Some(ms);
        true
    }

    fn log(&self, level: Level, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_string()));
    }
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// It reached the upstream with these headers.
    Forwarded(Vec<(String, String)>),
    /// It was answered locally.
    Replied(Reply),
    /// It is still paused.
    Paused,
}

/// The root context's id (HTTP contexts start at 2).
pub const ROOT_CONTEXT: u32 = 1;

/// The proxy: one worker's root context and its HTTP contexts, over a `FakeHost`.
pub struct Proxy {
    pub host: FakeHost,
    root: Root<FakeHost>,
    contexts: HashMap<u32, Http<FakeHost>>,
    next_id: u32,
}

impl Proxy {
    /// A worker configured with `configuration` at unix time `now`; panics if it is refused.
    pub fn new(configuration: &serde_json::Value, now: u64) -> Proxy {
        Self::try_new(configuration, now).expect("the configuration is accepted")
    }

    pub fn try_new(configuration: &serde_json::Value, now: u64) -> Option<Proxy> {
        Self::try_new_in(false, configuration, now)
    }

    /// A worker in NGINX (`nginx`: ngx_wasm_module's differences, `State::nginx`), else as `new`.
    pub fn new_in(nginx: bool, configuration: &serde_json::Value, now: u64) -> Proxy {
        Self::try_new_in(nginx, configuration, now).expect("the configuration is accepted")
    }

    fn try_new_in(nginx: bool, configuration: &serde_json::Value, now: u64) -> Option<Proxy> {
        let host = FakeHost::default();
        {
            let mut s = host.0.borrow_mut();
            s.configuration = configuration.to_string().into_bytes();
            s.now = now;
            s.nginx = nginx;
        }
        let mut root = Root::new(host.clone());
        root.configure().then_some(Proxy {
            host,
            root,
            contexts: HashMap::new(),
            next_id: 2,
        })
    }

    /// Another worker of the same proxy (same configuration, same clock now): its own VM state,
    /// this worker's shared data.
    pub fn beside(&self) -> Proxy {
        let (configuration, now, ms, nginx) = {
            let s = self.host.0.borrow();
            (s.configuration.clone(), s.now, s.ms, s.nginx)
        };
        let host = FakeHost::default();
        {
            let mut s = host.0.borrow_mut();
            s.configuration = configuration;
            s.now = now;
            s.ms = ms;
            s.shared_with = Some(self.host.clone());
            s.nginx = nginx;
        }
        let mut root = Root::new(host.clone());
        assert!(root.configure(), "the configuration is accepted");
        Proxy {
            host,
            root,
            contexts: HashMap::new(),
            next_id: 2,
        }
    }

    /// A worker whose configuration was refused (or never given): its contexts still exist.
    pub fn unconfigured() -> Proxy {
        let host = FakeHost::default();
        Proxy {
            root: Root::new(host.clone()),
            host,
            contexts: HashMap::new(),
            next_id: 2,
        }
    }

    /// A new request with `headers` on a connection that presented `cert` (none: no certificate).
    pub fn request(&mut self, headers: &[(&str, &str)], cert: Option<Thumbprint>) -> u32 {
        let hex: Option<String> = cert.map(|t| t.to_hex());
        let digest = hex
            .as_ref()
            .map(|h| ("sha256_peer_certificate_digest", h.as_bytes()));
        self.request_on(headers, digest.as_slice())
    }

    /// A new request with `headers` on a connection with these `connection.<name>` properties.
    pub fn request_on(&mut self, headers: &[(&str, &str)], properties: &[(&str, &[u8])]) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let stream = Stream {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            ..Stream::default()
        };
        {
            let mut s = self.host.0.borrow_mut();
            s.streams.insert(id, stream);
            s.current = id;
        }
        let mut http = self.root.http_context(id);
        let has_body = headers.iter().any(|(k, _)| *k == "content-type");
        if http.on_request_headers(!has_body) == Action::Continue {
            self.stream_mut(id).forwarded = true;
        }
        self.contexts.insert(id, http);
        id
    }

    /// A chunk of the request's body arrives (`last`: the end of the stream). The proxy delivers
    /// body data only to a request that has gone on; `true` when the body went on too.
    pub fn body(&mut self, context: u32, chunk: &[u8], last: bool) -> bool {
        self.host.0.borrow_mut().current = context;
        let size = {
            let mut st = self.stream_mut(context);
            st.body.extend_from_slice(chunk);
            st.body.len()
        };
        match self.contexts.get_mut(&context) {
            Some(http) => http.on_request_body(size, last) == Action::Continue,
            None => false,
        }
    }

    /// `GET path` with `Authorization: Bearer token` from a connection with `cert`.
    pub fn get(&mut self, path: &str, token: &str, cert: Option<Thumbprint>) -> u32 {
        let authorization = format!("Bearer {token}");
        self.request(
            &[
                (":method", "GET"),
                (":path", path),
                ("authorization", &authorization),
            ],
            cert,
        )
    }

    /// Delivers the answer to the last call `context` sent.
    pub fn answer(&mut self, context: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.deliver(
            context,
            Some(Delivery {
                headers: all,
                body: body.to_vec(),
            }),
        );
    }

    /// The last call `context` sent failed (reset, timeout, no upstream).
    pub fn fail_call(&mut self, context: u32) {
        self.deliver(context, None);
    }

    fn deliver(&mut self, context: u32, delivery: Option<Delivery>) {
        let (headers, body) = match &delivery {
            Some(d) => (d.headers.len(), d.body.len()),
            None => (0, 0),
        };
        {
            let mut s = self.host.0.borrow_mut();
            s.delivery = delivery;
            s.current = context;
        }
        if let Some(http) = self.contexts.get_mut(&context) {
            http.on_call_response(headers, body);
        }
        self.host.0.borrow_mut().delivery = None;
    }

    /// The request's trailers arrive (its body ended without `last`); `true` when it went on.
    pub fn trailers(&mut self, context: u32) -> bool {
        self.host.0.borrow_mut().current = context;
        match self.contexts.get_mut(&context) {
            Some(http) => http.on_request_trailers() == Action::Continue,
            None => false,
        }
    }

    /// The client goes away: the proxy calls `on_done` and forgets the stream.
    pub fn gone(&mut self, context: u32) {
        self.host.0.borrow_mut().current = context;
        if let Some(mut http) = self.contexts.remove(&context) {
            http.on_done();
        }
        self.stream_mut(context).gone = true;
    }

    /// The worker's timer fires after `seconds` have passed.
    pub fn advance(&mut self, seconds: u64) {
        self.advance_ms(seconds * 1000);
    }

    /// The worker's timer fires after `ms` milliseconds have passed.
    pub fn advance_ms(&mut self, ms: u64) {
        {
            let mut s = self.host.0.borrow_mut();
            let total = s.ms + ms;
            s.now += total / 1000;
            s.ms = total % 1000;
        }
        self.tick();
    }

    /// The timer fires, now.
    pub fn tick(&mut self) {
        self.host.0.borrow_mut().current = ROOT_CONTEXT;
        self.root.tick();
    }

    /// Delivers the answer to the root context's last call.
    pub fn answer_root(&mut self, status: u16, body: &[u8]) {
        let headers = vec![(":status".to_string(), status.to_string())];
        let len = body.len();
        {
            let mut s = self.host.0.borrow_mut();
            s.delivery = Some(Delivery {
                headers,
                body: body.to_vec(),
            });
            s.current = ROOT_CONTEXT;
        }
        self.root.on_call_response(1, len);
        self.host.0.borrow_mut().delivery = None;
    }

    /// The root context's last call failed.
    pub fn fail_root_call(&mut self) {
        self.host.0.borrow_mut().current = ROOT_CONTEXT;
        self.root.on_call_response(0, 0);
    }

    /// The calls the root context sent.
    pub fn root_calls(&self) -> Vec<Call> {
        let s = self.host.0.borrow();
        s.calls
            .iter()
            .filter(|(c, _)| *c == ROOT_CONTEXT)
            .map(|(_, call)| call.clone())
            .collect()
    }

    /// Gauge `certbound.<name>`.
    pub fn gauge(&self, name: &str) -> Option<u64> {
        let s = self.host.0.borrow();
        s.gauges.get(&format!("certbound.{name}")).copied()
    }

    pub fn fate(&self, context: u32) -> Fate {
        let s = self.host.0.borrow();
        let Some(st) = s.streams.get(&context) else {
            return Fate::Paused;
        };
        match (st.forwarded, st.replies.first()) {
            (true, None) => Fate::Forwarded(st.headers.clone()),
            (false, Some(reply)) if st.replies.len() == 1 => Fate::Replied(reply.clone()),
            (false, None) => Fate::Paused,
            _ => panic!(
                "request {context} was both forwarded and answered, or answered twice: {st:?}"
            ),
        }
    }

    /// The status of a local reply, or 200 for a forwarded request, or 0 while paused.
    pub fn status(&self, context: u32) -> u32 {
        match self.fate(context) {
            Fate::Forwarded(_) => 200,
            Fate::Replied(r) => r.status,
            Fate::Paused => 0,
        }
    }

    /// The value of header `name` the upstream got (`None`: not forwarded, or no such header).
    pub fn upstream_header(&self, context: u32, name: &str) -> Option<String> {
        match self.fate(context) {
            Fate::Forwarded(h) => h.into_iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Every call sent so far, with its context.
    pub fn calls(&self) -> Vec<(u32, Call)> {
        self.host.0.borrow().calls.clone()
    }

    pub fn stream_mut(&mut self, context: u32) -> std::cell::RefMut<'_, Stream> {
        std::cell::RefMut::map(self.host.0.borrow_mut(), |s| {
            s.streams.entry(context).or_default()
        })
    }

    /// Counter `certbound.<name>` as the host has it after the next tick.
    pub fn counter(&mut self, name: &str) -> u64 {
        self.tick();
        let s = self.host.0.borrow();
        let full = format!("certbound.{name}");
        s.counter_names
            .iter()
            .position(|n| *n == full)
            .and_then(|id| s.counters.get(&(id as u32)).copied())
            .unwrap_or(0)
    }
}
