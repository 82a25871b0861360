//! The one seam over the proxy: every host call certbound makes goes through the `Host` trait, and
//! `ProxyHost` is its only implementation over the proxy-wasm ABI. Host `Status` values become
//! `Option`/`Result`/`bool` here; nothing unwraps. Tests drive the filter through a fake host
//! (`crate::fake_host`) instead.

use crate::cache::SharedStore;
use crate::deny::Reply;
use crate::flow::{Call, CallAnswer};
use crate::headers::Headers;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What certbound needs from the proxy. Shared data (`SharedStore`) is shared by every worker of
/// one VM id; everything else acts on the current (effective) context.
pub trait Host: SharedStore {
    /// The plugin configuration (root context, at configure time).
    fn plugin_configuration(&self) -> Vec<u8>;
    /// Unix seconds by the host's clock; 0 if the host cannot tell, which makes every entry expired.
    fn now(&self) -> u64;
    /// Every request header, in one host call.
    fn request_headers(&self) -> Headers;
    /// A property of the stream or connection, such as `connection.sha256_peer_certificate_digest`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Sets (or with `None` removes) a request header. False if the host refused.
    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool;
    /// Answers the request locally; it never reaches the upstream.
    fn send_reply(&self, reply: &Reply);
    /// Lets a paused request go on to the upstream.
    fn resume_request(&self);
    /// Makes the following host calls act on another context (a request waiting on this one).
    /// False if that context no longer exists.
    fn set_effective_context(&self, context_id: u32) -> bool;
    /// Sends a call; its answer arrives in the calling context's `on_http_call_response`.
    fn dispatch(&self, call: &Call) -> Result<u32, String>;
    /// The answer of a dispatched call, read in `on_http_call_response`. `headers` is the number of
    /// answer headers the host announced (0 when the call failed), `body_size` the body's length.
    fn call_answer(&self, headers: usize, body_size: usize, max_body: usize) -> CallAnswer;
    /// Defines a counter; `None` if the host refuses.
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment_counter(&self, id: u32, by: u64);
    /// Asks for the root context's timer every `ms` milliseconds. False if the host refused.
    fn set_tick_period_ms(&self, ms: u64) -> bool;
    /// Writes a line to the proxy's log. Never a token, a secret or a whole header.
    fn log(&self, level: Level, message: &str);
}

/// The proxy-wasm host.
#[derive(Clone, Copy)]
pub struct ProxyHost;

impl SharedStore for ProxyHost {
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

impl Host for ProxyHost {
    fn plugin_configuration(&self) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn now(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }

    /// Read in place from the host's buffer: one host call, no copy per header, and no panic on a
    /// value that is not UTF-8 (the SDK's `get_map` panics on those, which kills the VM; HTTP/1
    /// allows such bytes).
    fn request_headers(&self) -> Headers {
        #[link(wasm_import_module = "env")]
        extern "C" {
            fn proxy_get_header_map_pairs(
                map_type: u32,
                data: *mut *mut u8,
                size: *mut usize,
            ) -> u32;
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a buffer it allocated through this module's
        // `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`, forgotten), which this takes
        // back exactly as the SDK's own `get_map` does.
        let buffer = unsafe {
            let status = proxy_get_header_map_pairs(
                MapType::HttpRequestHeaders as u32,
                &mut data,
                &mut size,
            );
            if status != Status::Ok as u32 || data.is_null() {
                Vec::new()
            } else {
                Vec::from_raw_parts(data, size, size)
            }
        };
        Headers::from_serialized(buffer)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value).is_ok()
    }

    fn send_reply(&self, reply: &Reply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let _ = hostcalls::send_http_response(reply.status, headers, Some(&reply.body));
    }

    fn resume_request(&self) {
        // Nothing more can be done if the stream is already gone.
        let _ = hostcalls::resume_http_request();
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        let headers: Vec<(&str, &str)> =
            call.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        hostcalls::dispatch_http_call(
            &call.cluster,
            headers,
            call.body.as_deref(),
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn call_answer(&self, headers: usize, body_size: usize, max_body: usize) -> CallAnswer {
        if headers == 0 {
            // The call failed (reset, timeout, no upstream): there is nothing to read, and
            // reading `:status` then is an error the SDK would panic on.
            return CallAnswer::failed();
        }
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
        CallAnswer {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            body,
        }
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment_counter(&self, id: u32, by: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }

    fn set_tick_period_ms(&self, ms: u64) -> bool {
        hostcalls::set_tick_period(Duration::from_millis(ms)).is_ok()
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }
}
