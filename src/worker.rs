//! What one worker (one wasm VM) keeps between requests: its configuration, its caches, the calls
//! it has out and the requests waiting for them, and its metric tally. Plain data; the request flow
//! (`crate::flow`) reads and changes it, the context adapters hold it.

use crate::binding::{ConnectionThumbprints, Thumbprint};
use crate::cache::{KeyDeriver, LocalCache, Seal, TokenHash, TokenKey};
use crate::certificate::ParsedCertificates;
use crate::config::{Config, JwtRules};
use crate::jwks::KeySet;
use crate::metrics::Tally;
use crate::revocation::Revocations;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Entries this VM keeps for itself in front of shared data.
const LOCAL_ENTRIES: usize = 1024;

/// The proxy the module runs in, told apart once per VM (`Host::proxy`): it decides where the
/// connection's certificate comes from and whether requests can wait for one another's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// Envoy: `connection.sha256_peer_certificate_digest`; one request's verdict can be carried
    /// out from another's context (`proxy_set_effective_context`).
    Envoy,
    /// NGINX with Kong's ngx_wasm_module: the certificate's PEM (`ngx.ssl_client_raw_cert`), per
    /// `connection.id`; `proxy_set_effective_context` is ignored, so no request waits for another.
    Nginx,
}

impl Proxy {
    pub fn name(self) -> &'static str {
        match self {
            Proxy::Envoy => "envoy",
            Proxy::Nginx => "nginx",
        }
    }

    pub fn traits(self) -> HostTraits {
        match self {
            Proxy::Envoy => HostTraits {
                single_flight: true,
                removes_headers: true,
            },
            Proxy::Nginx => HostTraits {
                single_flight: false,
                removes_headers: false,
            },
        }
    }
}

/// What the flow relies on that one proxy does and the other does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTraits {
    /// One request's verdict can be carried out from another's context, so requests with the
    /// same token wait for one check (else each makes its own call).
    pub single_flight: bool,
    /// A request header removed (or a second copy of one set) does not reach the upstream.
    /// ngx_wasm_module only marks it, and NGINX's proxy module forwards it anyway: there a request
    /// that carries a header certbound would remove or overwrite is refused instead.
    pub removes_headers: bool,
}

/// The configuration (fixed once configured) and the state that changes with every request.
pub struct Worker {
    pub config: Config,
    /// The proxy it runs in (asked once, at configure time).
    pub proxy: Proxy,
    /// The first request has checked `proxy` the other way (`http.rs`), and whether that check
    /// failed: then every request is refused.
    pub proxy_checked: Cell<bool>,
    pub proxy_mistaken: Cell<bool>,
    /// Certificates of the last connections, where the proxy gives no digest (NGINX). Apart from
    /// `state`: it is read while the flow holds that.
    pub connections: RefCell<ConnectionThumbprints>,
    /// Unix seconds, read from the host on the root context's timer (a hit reads no clock).
    pub clock: Cell<u64>,
    pub state: RefCell<State>,
}

impl Worker {
    pub fn new(config: Config, proxy: Proxy) -> Worker {
        let state = State::new(&config, proxy);
        Worker {
            config,
            proxy,
            proxy_checked: Cell::new(false),
            proxy_mistaken: Cell::new(false),
            connections: RefCell::new(ConnectionThumbprints::default()),
            state: RefCell::new(state),
            clock: Cell::new(0),
        }
    }
}

pub struct State {
    /// Turns a token into its cache key (namespace and configuration fingerprint absorbed once).
    pub key_deriver: KeyDeriver,
    /// Marks what this configuration writes to shared data as its own.
    pub seal: Seal,
    pub local: LocalCache,
    /// Tokens being checked right now. Where the host can resume one request from another's
    /// context, one call per token per worker, however many requests carry it at once; else one
    /// per request (`CheckId`).
    pub inflight: HashMap<CheckId, Inflight>,
    /// What the proxy can do (`Proxy::traits`).
    pub host: HostTraits,
    /// This worker's parsed copy of the key set and when it was fetched.
    pub keys: Option<(u64, Rc<KeySet>)>,
    /// The key set call out (one per worker, whatever the number of checks that need it).
    pub key_set_fetch: Option<KeySetFetch>,
    /// When the last key set call failed: no new one before `KEY_SET_BACKOFF_SECONDS` after it.
    pub key_set_failed_at: Option<u64>,
    /// Counts not yet handed to the host.
    pub tally: Tally,
    /// Lines for the host's log that no single request's verdict carries (what a new key set
    /// left out); the adapter logs and empties it after each call answer.
    pub notices: Vec<String>,
    /// Client certificates parsed for routes' allow-lists, by thumbprint.
    pub parsed: ParsedCertificates,
    /// The revocation events this worker has applied, and whether its cache is trusted.
    pub revocations: Revocations,
}

impl State {
    pub fn new(config: &Config, proxy: Proxy) -> State {
        State {
            key_deriver: KeyDeriver::new(&config.cache.namespace, &config.fingerprint),
            seal: Seal::new(&config.fingerprint, &config.introspection.client_secret),
            local: LocalCache::new(LOCAL_ENTRIES.min(config.cache.max_entries as usize)),
            inflight: HashMap::new(),
            host: proxy.traits(),
            keys: None,
            key_set_fetch: None,
            key_set_failed_at: None,
            tally: Tally::default(),
            notices: Vec::new(),
            parsed: ParsedCertificates::default(),
            revocations: Revocations::new(config.revocation.as_ref()),
        }
    }
}

/// A request that waits for a token's check: decided with its own certificate and route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub context_id: u32,
    pub thumbprint: Option<Thumbprint>,
    pub route: Option<usize>,
    /// Request headers to remove if it is allowed (`flow::spoofable_headers`; usually none).
    pub strip: Vec<String>,
}

/// Which check: the token's cache key, and where requests do not share checks
/// (`HostTraits::single_flight` false), the request that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckId {
    pub token: TokenKey,
    /// 0 where requests with the same token share one check.
    pub caller: u32,
}

impl State {
    /// The check a request with `token` in `context_id` makes or waits for.
    pub fn check_id(&self, token: TokenKey, context_id: u32) -> CheckId {
        let caller = if self.host.single_flight {
            0
        } else {
            context_id
        };
        CheckId { token, caller }
    }
}

/// One token's check in progress.
#[derive(Debug)]
pub struct Inflight {
    /// The request whose context made the call (the answer arrives there).
    pub caller: Waiter,
    /// What revocation events would name the token by (`crate::revocation::token_hash`).
    pub token_hash: TokenHash,
    pub stage: Stage,
    /// Other requests with the same token that arrived meanwhile.
    pub waiters: Vec<Waiter>,
}

/// Which call is out.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Introspection,
    /// The key set, needed to finish this check.
    KeySet(JwtCheck),
    /// The key set too, but another check's call is fetching it (`State::key_set_fetch`).
    AwaitingKeySet(JwtCheck),
}

/// Seconds after a failed key set call during which checks that need the key set fail at once
/// (503) instead of calling again: a key-set outage is not multiplied by the requests.
pub const KEY_SET_BACKOFF_SECONDS: u64 = 5;

/// The worker's key set call: which check's context made it, and the checks waiting for it.
#[derive(Debug)]
pub struct KeySetFetch {
    pub by: CheckId,
    pub waiting: Vec<CheckId>,
}

/// A JWT answer waiting to be verified.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtCheck {
    pub jwt: String,
    /// The answer's `Cache-Control: max-age`.
    pub max_age: Option<u64>,
    pub rules: Rc<JwtRules>,
}
