//! The one seam over host calls: headers, properties, clock, shared data, dispatch, replies,
//! metrics. Host `Status` values become `Option`/`Result` here; nothing unwraps.

use crate::binding::Thumbprint;
use crate::cache::SharedStore;
use crate::config::Endpoint;
use crate::decision::DenyReason;
use crate::response::Reply;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// Shared data of this VM id: one copy for all workers.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// Unix seconds by the host's clock; 0 if the host cannot tell, which makes every entry expired.
pub fn now() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The thumbprint of this connection's client certificate: Envoy's digest, else its PEM.
pub fn client_thumbprint() -> Option<Thumbprint> {
    let property = |name| {
        hostcalls::get_property(vec!["connection", name])
            .ok()
            .flatten()
    };
    if let Some(digest) = property("sha256_peer_certificate_digest") {
        if let Some(t) = std::str::from_utf8(&digest)
            .ok()
            .and_then(Thumbprint::from_hex_digest)
        {
            return Some(t);
        }
    }
    let pem = property("peer_certificate")?;
    Thumbprint::from_pem(std::str::from_utf8(&pem).ok()?)
}

/// All request headers, names in lower case, in order.
pub fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Makes the following host calls act on another context (a request waiting on this one).
/// False if that context no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

/// Sets (or with `None` removes) a request header. False if the host refused.
pub fn set_request_header(name: &str, value: Option<&str>) -> bool {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value).is_ok()
}

pub fn resume_request() {
    // Nothing more can be done if the stream is already gone.
    let _ = hostcalls::resume_http_request();
}

pub fn send_reply(reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(&reply.body));
}

/// Dispatches a call to `endpoint`; the answer arrives in `on_http_call_response`.
pub fn dispatch(
    endpoint: &Endpoint,
    method: &str,
    extra_headers: &[(&str, String)],
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, Status> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", method),
        (":path", &endpoint.path),
        (":authority", &endpoint.authority),
    ];
    headers.extend(
        extra_headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .map(|(k, v)| (*k, v.as_str())),
    );
    hostcalls::dispatch_http_call(
        &endpoint.cluster,
        headers,
        body,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

/// A dispatched call's answer: status (none if the call failed), one header, and the body.
pub struct CallResponse {
    pub status: Option<u16>,
    pub cache_control: Option<String>,
    /// `None` when the body is larger than allowed; it is then never read.
    pub body: Option<Vec<u8>>,
}

pub fn call_response(body_size: usize, max_body: usize) -> CallResponse {
    let header = |name| {
        hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
    };
    let body = if body_size > max_body {
        None
    } else if body_size == 0 {
        Some(Vec::new())
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .map(Option::unwrap_or_default)
    };
    CallResponse {
        status: header(":status").and_then(|s| s.parse().ok()),
        cache_control: header("cache-control"),
        body,
    }
}

/// The filter's counters, shown by Envoy in `/stats`.
pub struct Metrics {
    allowed: u32,
    denied: [u32; DenyReason::ALL_METRICS.len()],
    cache_hits: u32,
    cache_misses: u32,
    introspection_calls: u32,
    introspection_failures: u32,
    jwks_fetches: u32,
}

#[derive(Clone, Copy)]
pub enum Metric {
    Allowed,
    Denied(DenyReason),
    CacheHit,
    CacheMiss,
    IntrospectionCall,
    IntrospectionFailure,
    JwksFetch,
}

impl Metrics {
    pub fn define() -> Result<Metrics, Status> {
        let counter = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("certbound.{name}"))
        };
        let mut denied = [0; DenyReason::ALL_METRICS.len()];
        for (id, reason) in denied.iter_mut().zip(DenyReason::ALL_METRICS) {
            *id = counter(&format!("requests_denied.{reason}"))?;
        }
        Ok(Metrics {
            allowed: counter("requests_allowed")?,
            denied,
            cache_hits: counter("cache_hits")?,
            cache_misses: counter("cache_misses")?,
            introspection_calls: counter("introspection_calls")?,
            introspection_failures: counter("introspection_failures")?,
            jwks_fetches: counter("jwks_fetches")?,
        })
    }

    pub fn count(&self, metric: Metric) {
        let id = match metric {
            Metric::Allowed => self.allowed,
            Metric::Denied(reason) => match self.denied.get(reason.index()) {
                Some(id) => *id,
                None => return,
            },
            Metric::CacheHit => self.cache_hits,
            Metric::CacheMiss => self.cache_misses,
            Metric::IntrospectionCall => self.introspection_calls,
            Metric::IntrospectionFailure => self.introspection_failures,
            Metric::JwksFetch => self.jwks_fetches,
        };
        let _ = hostcalls::increment_metric(id, 1);
    }
}
