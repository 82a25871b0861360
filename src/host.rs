//! The one seam over host calls: headers, properties, clock, shared data, dispatch, replies,
//! metrics. Host `Status` values become `Option`/`Result` here; nothing unwraps.

use crate::binding::Thumbprint;
use crate::cache::SharedStore;
use crate::config::Endpoint;
use crate::decision::DenyReason;
use crate::response::Reply;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::borrow::Cow;
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

/// The request headers as one buffer from the host, read in place: one host call, no copy per
/// header, and no panic on a value that is not UTF-8 (the SDK's `get_map` panics on those, which
/// kills the VM; HTTP/1 allows such bytes).
pub fn request_headers() -> Headers {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through this module's
    // `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`, forgotten), which this takes
    // back exactly as the SDK's own `get_map` does.
    let buffer = unsafe {
        let status =
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size);
        if status != Status::Ok as u32 || data.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(data, size, size)
        }
    };
    Headers::from_serialized(buffer)
}

/// Header pairs in the host's serialization: a count, then (name length, value length) for each
/// pair as little-endian u32, then each name and value followed by a NUL byte. Names are lower case.
pub struct Headers(Vec<u8>);

impl Headers {
    pub fn from_serialized(buffer: Vec<u8>) -> Headers {
        Headers(buffer)
    }

    /// Every pair, in order. A truncated buffer ends the pairs early.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let b = self.0.as_slice();
        let u32_at = |i: usize| -> Option<usize> {
            let bytes = b.get(i..i.checked_add(4)?)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
        };
        let count = u32_at(0).unwrap_or(0);
        let mut n = 0;
        let mut p = count.saturating_mul(8).saturating_add(4);
        std::iter::from_fn(move || {
            if n >= count {
                return None;
            }
            let name_len = u32_at(4 + 8 * n)?;
            let value_len = u32_at(8 + 8 * n)?;
            let name = b.get(p..p.checked_add(name_len)?)?;
            p = p.checked_add(name_len + 1)?;
            let value = b.get(p..p.checked_add(value_len)?)?;
            p = p.checked_add(value_len + 1)?;
            n += 1;
            Some((name, value))
        })
    }

    /// Every value of header `name` (lower case). A value that is not UTF-8 comes with U+FFFD in
    /// place of the bad bytes, which no token grammar accepts.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> {
        self.pairs()
            .filter(move |(k, _)| *k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// The first value of header `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<Cow<'a, str>> {
        self.values(name).next()
    }
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
    // Bytes, not `get_map_value`: the SDK panics on a value that is not UTF-8.
    let header = |name| {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
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

#[cfg(test)]
mod tests {
    use super::Headers;

    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            b.extend((k.len() as u32).to_le_bytes());
            b.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            b.extend(*k);
            b.push(0);
            b.extend(*v);
            b.push(0);
        }
        b
    }

    #[test]
    fn headers_are_read_in_place_from_the_host_serialization() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":path", b"/api/x"),
            (b"authorization", b"Bearer one"),
            (b"x-note", b"caf\xe9"),
            (b"authorization", b""),
        ];
        let h = Headers::from_serialized(serialize(&pairs));
        assert_eq!(h.pairs().collect::<Vec<_>>(), pairs);
        assert_eq!(h.get(":path").as_deref(), Some("/api/x"));
        assert_eq!(
            h.values("authorization").collect::<Vec<_>>(),
            ["Bearer one", ""]
        );
        assert_eq!(h.get("x-note").as_deref(), Some("caf\u{fffd}"));
        assert_eq!(h.get("x-missing"), None);
        assert_eq!(Headers::from_serialized(Vec::new()).pairs().count(), 0);
    }

    #[test]
    fn a_truncated_or_lying_buffer_ends_the_pairs_without_panicking() {
        let full = serialize(&[(b"a", b"1"), (b"bb", b"22")]);
        for cut in 0..full.len() {
            let h = Headers::from_serialized(full[..cut].to_vec());
            assert!(h.pairs().count() <= 2, "cut at {cut}");
        }
        let mut huge_count = full.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_serialized(huge_count).pairs().count(), 0);
        let mut huge_len = full;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_serialized(huge_len).pairs().count(), 0);
    }
}
