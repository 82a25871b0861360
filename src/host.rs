//! The one seam over the proxy: every host call certbound makes goes through the `Host` trait, and
//! `ProxyHost` is its only implementation over the proxy-wasm ABI. Host `Status` values become
//! `Option`/`Result`/`bool` here; nothing unwraps. Tests drive the filter through a fake host
//! (`crate::fake_host`) instead.

use crate::cache::SharedStore;
use crate::deny::Reply;
use crate::flow::{Call, CallAnswer};
use crate::headers::Headers;
use crate::worker::Proxy;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

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
    /// Unix milliseconds by the host's clock; 0 if the host cannot tell.
    fn now_ms(&self) -> u64;
    /// Unix seconds by the host's clock; 0 if the host cannot tell, which makes every entry expired.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
    /// Every request header, in one host call.
    fn request_headers(&self) -> Headers;
    /// The request body buffered so far (`size` bytes, from `on_request_body`).
    fn request_body(&self, size: usize) -> Vec<u8>;
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
    /// Which proxy this is. Asked once, at configure time.
    fn proxy(&self) -> Proxy;
    /// Sends a call; its answer arrives in the calling context's `on_http_call_response`.
    fn dispatch(&self, call: &Call) -> Result<u32, String>;
    /// The answer of a dispatched call that came back with headers, read in
    /// `on_http_call_response`; `body_size` is the body's length, a longer one than `max_body`
    /// is not read.
    fn call_answer(&self, body_size: usize, max_body: usize) -> CallAnswer;
    /// Defines a counter; `None` if the host refuses.
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment_counter(&self, id: u32, by: u64);
    /// Defines a gauge; `None` if the host refuses.
    fn define_gauge(&self, name: &str) -> Option<u32>;
    fn set_gauge(&self, id: u32, value: u64);
    /// Asks for the root context's timer every `ms` milliseconds. False if the host refused.
    fn set_tick_period_ms(&self, ms: u64) -> bool;
    /// Writes a line to the proxy's log. Never a token, a secret or a whole header.
    fn log(&self, level: Level, message: &str);
}

/// The proxy-wasm host. It calls the ABI's functions itself instead of the SDK's `hostcalls`,
/// which panic on any status they do not expect (a panic kills the VM: every later request then
/// fails). Here every status is an answer: data, `None`, `false` or an error.
#[derive(Clone, Copy)]
pub struct ProxyHost;

/// The proxy-wasm 0.2.1 ABI imports certbound uses. Enum arguments are passed as their `u32`
/// values; every function returns a `Status` as `u32`.
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    }
}

const OK: u32 = Status::Ok as u32;

/// Takes back a buffer the host wrote through this module's `proxy_on_memory_allocate` (a
/// `Vec<u8>` of capacity `size`, forgotten), exactly as the SDK does.
///
/// # Safety
/// `data` is null or what the host returned with `size` for a call that returned `Ok`.
unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// A call that returns bytes: `Some` on `Ok`, `None` for any other status.
fn read_bytes(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let status = call(&mut data, &mut size);
    // SAFETY: on Ok the host has written `data`/`size` as `take_buffer` expects; otherwise
    // nothing was allocated.
    (status == OK).then(|| unsafe { take_buffer(data, size) })
}

fn header_value(map: MapType, name: &str) -> Option<Vec<u8>> {
    // SAFETY: the pointers are valid for the call; the host writes only the two out-parameters.
    read_bytes(|data, size| unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
    })
}

fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: the pointers are valid for the call; `id` is an out-parameter.
    let status =
        unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

impl SharedStore for ProxyHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        let mut cas: u32 = 0;
        // SAFETY: as in `header_value`; `cas` is an out-parameter.
        let value = read_bytes(|data, size| unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas)
        })?;
        Some((value, (cas != 0).then_some(cas)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        // SAFETY: the pointers are valid for the call.
        let status = unsafe {
            abi::proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        status == OK
    }
}

impl Host for ProxyHost {
    fn plugin_configuration(&self) -> Vec<u8> {
        let buffer = BufferType::PluginConfiguration as u32;
        // SAFETY: as in `header_value`.
        read_bytes(|data, size| unsafe {
            abi::proxy_get_buffer_bytes(buffer, 0, usize::MAX, data, size)
        })
        .unwrap_or_default()
    }

    fn now_ms(&self) -> u64 {
        let mut nanos: u64 = 0;
        // SAFETY: `nanos` is an out-parameter.
        let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
        if status == OK {
            nanos / 1_000_000
        } else {
            0
        }
    }

    /// Read in place from the host's buffer: one host call, no copy per header, and no panic on a
    /// value that is not UTF-8 (the SDK's `get_map` panics on those; HTTP/1 allows such bytes).
    fn request_headers(&self) -> Headers {
        let map = MapType::HttpRequestHeaders as u32;
        // SAFETY: as in `header_value`.
        let buffer =
            read_bytes(|data, size| unsafe { abi::proxy_get_header_map_pairs(map, data, size) });
        Headers::from_serialized(buffer.unwrap_or_default())
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        let buffer = BufferType::HttpRequestBody as u32;
        // SAFETY: as in `header_value`.
        read_bytes(|data, out| unsafe { abi::proxy_get_buffer_bytes(buffer, 0, size, data, out) })
            .unwrap_or_default()
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        // The ABI's path: the parts joined by NUL bytes.
        let path = path.join("\0");
        // SAFETY: as in `header_value`.
        read_bytes(|data, size| unsafe {
            abi::proxy_get_property(path.as_ptr(), path.len(), data, size)
        })
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) -> bool {
        let map = MapType::HttpRequestHeaders as u32;
        // SAFETY: the pointers are valid for the call.
        let status = unsafe {
            match value {
                Some(v) => abi::proxy_replace_header_map_value(
                    map,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                ),
                None => abi::proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
            }
        };
        status == OK
    }

    fn send_reply(&self, reply: &Reply) {
        let pairs: Vec<(&[u8], &[u8])> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        let headers = Headers::serialize(&pairs);
        // SAFETY: the pointers are valid for the call. Nothing more can be done if it fails.
        let _ = unsafe {
            abi::proxy_send_local_response(
                reply.status,
                std::ptr::null(),
                0,
                reply.body.as_ptr(),
                reply.body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
    }

    fn resume_request(&self) {
        // Nothing more can be done if the stream is already gone.
        // SAFETY: no pointers.
        let _ = unsafe { abi::proxy_continue_stream(StreamType::HttpRequest as u32) };
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        // SAFETY: no pointers.
        unsafe { abi::proxy_set_effective_context(context_id) == OK }
    }

    /// Asked the only way that is silent in both proxies and works in the root context (where
    /// ngx_wasm_module refuses the properties that would tell, with an error in its log): making a
    /// context that does not exist the effective one. Envoy refuses (`BadArgument`); ngx_wasm_module
    /// ignores the call and answers `Ok`. It is the very capability that sets the two apart here.
    fn proxy(&self) -> Proxy {
        // SAFETY: no pointers.
        match unsafe { abi::proxy_set_effective_context(u32::MAX) } {
            OK => Proxy::Nginx,
            _ => Proxy::Envoy,
        }
    }

    fn dispatch(&self, call: &Call) -> Result<u32, String> {
        // The SDK's call, not the ABI's: its dispatcher must register the call's token, or it
        // panics when the answer arrives. It panics only on statuses Envoy does not return here.
        let headers: Vec<(&str, &str)> =
            call.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        proxy_wasm::hostcalls::dispatch_http_call(
            &call.cluster,
            headers,
            call.body.as_deref(),
            vec![],
            std::time::Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn call_answer(&self, body_size: usize, max_body: usize) -> CallAnswer {
        // Bytes, not strings: a value that is not UTF-8 is no status and no max-age.
        let header = |name| {
            header_value(MapType::HttpCallResponseHeaders, name)
                .and_then(|v| String::from_utf8(v).ok())
        };
        let body = if body_size > max_body {
            None
        } else if body_size == 0 {
            Some(Vec::new())
        } else {
            let buffer = BufferType::HttpCallResponseBody as u32;
            // SAFETY: as in `header_value`.
            let body = read_bytes(|data, size| unsafe {
                abi::proxy_get_buffer_bytes(buffer, 0, body_size, data, size)
            });
            // A body the host cannot hand over is no answer.
            match body {
                Some(b) => Some(b),
                None => return CallAnswer::failed(),
            }
        };
        CallAnswer {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            body,
        }
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        define_metric(MetricType::Counter, name)
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        define_metric(MetricType::Gauge, name)
    }

    fn set_gauge(&self, id: u32, value: u64) {
        // SAFETY: no pointers.
        let _ = unsafe { abi::proxy_record_metric(id, value) };
    }

    fn increment_counter(&self, id: u32, by: u64) {
        // SAFETY: no pointers.
        let _ = unsafe { abi::proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }

    fn set_tick_period_ms(&self, ms: u64) -> bool {
        let period = u32::try_from(ms).unwrap_or(u32::MAX);
        // SAFETY: no pointers.
        unsafe { abi::proxy_set_tick_period_milliseconds(period) == OK }
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        // SAFETY: the pointer is valid for the call.
        let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
    }
}
