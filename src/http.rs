//! The HTTP context: reads a request's facts through the host seam, hands them to the flow, and
//! carries out what the flow returns. `Http<ProxyHost>` is what the proxy calls; tests drive
//! `Http<FakeHost>` the same way.

use crate::binding;
use crate::certificate::{CertificateFacts, Peer};
use crate::deny::{self, DenyReason};
use crate::flow::{self, CallAnswer, Next, RequestFacts, Start, Verdict};
use crate::host::{Host, Level, ProxyHost};
use crate::token;
use crate::worker::{CheckId, Proxy, Worker};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

pub struct Http<H: Host> {
    id: u32,
    host: H,
    /// `None` when the filter is not configured: every request is refused.
    worker: Option<Rc<Worker>>,
    /// The token this request is paused for.
    pending: Option<CheckId>,
    /// The request has an `application/x-www-form-urlencoded` body, to check before it goes on.
    form_body: bool,
    /// The connection's certificate, for the log of a deny on the body.
    thumbprint: Option<binding::Thumbprint>,
}

/// Refuses a request the filter cannot check (the state is busy, which does not happen with a
/// host that calls one callback at a time, or the filter is not configured): fail closed.
fn refuse(host: &impl Host, why: &'static str, realm: &str) -> Action {
    let reason = DenyReason::IntrospectionUnavailable(why);
    host.log(Level::Error, &format!("refused a request: {why}"));
    host.send_reply(&deny::reply(reason, realm, &[]));
    Action::Pause
}

/// The request's connection, read through the host when the flow asks (each read is a host call).
struct HostPeer<'a, H: Host> {
    host: &'a H,
    worker: &'a Worker,
    thumbprint: OnceCell<Option<binding::Thumbprint>>,
}

impl<H: Host> HostPeer<'_, H> {
    /// The connection's certificate the way this proxy tells it: Envoy's digest (one host call);
    /// in NGINX the PEM, decoded and hashed once per connection (one host call on later requests).
    fn read_thumbprint(&self) -> Option<binding::Thumbprint> {
        match self.worker.proxy {
            Proxy::Envoy => {
                binding::client_thumbprint(|name| self.host.property(&["connection", name]))
            }
            Proxy::Nginx => {
                let id = self.host.property(&["connection", "id"])?;
                let read = || binding::nginx_client_thumbprint(|v| self.host.property(&["ngx", v]));
                match self.worker.connections.try_borrow_mut() {
                    Ok(mut seen) => seen.get_or_read(&id, read),
                    Err(_) => read(),
                }
            }
        }
    }

    /// The first SAN of a kind: Envoy's property, or in NGINX (which has none) the certificate's.
    fn first_san(&self, property: &str, of: fn(CertificateFacts) -> Vec<String>) -> Option<String> {
        match self.worker.proxy {
            Proxy::Envoy => {
                let v = self.host.property(&["connection", property])?;
                String::from_utf8(v).ok()
            }
            Proxy::Nginx => of(CertificateFacts::parse(&self.der()?)?)
                .into_iter()
                .next(),
        }
    }
}

impl<H: Host> Peer for HostPeer<'_, H> {
    #[inline]
    fn thumbprint(&self) -> Option<binding::Thumbprint> {
        *self.thumbprint.get_or_init(|| self.read_thumbprint())
    }

    fn der(&self) -> Option<Vec<u8>> {
        match self.worker.proxy {
            Proxy::Envoy => None,
            Proxy::Nginx => binding::nginx_client_der(|v| self.host.property(&["ngx", v])),
        }
    }

    fn uri_san(&self) -> Option<String> {
        self.first_san("uri_san_peer_certificate", |f| f.uri_sans)
    }

    fn dns_san(&self) -> Option<String> {
        self.first_san("dns_san_peer_certificate", |f| f.dns_sans)
    }

    fn address(&self) -> Option<IpAddr> {
        let v = self.host.property(&["source", "address"])?;
        let s = std::str::from_utf8(&v).ok()?;
        // "10.0.0.1:5000" or "[::1]:5000"; a bare address too.
        s.parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| s.parse::<IpAddr>())
            .ok()
    }
}

impl<H: Host> Http<H> {
    pub fn new(id: u32, host: H, worker: Option<Rc<Worker>>) -> Self {
        Http {
            id,
            host,
            worker,
            pending: None,
            form_body: false,
            thumbprint: None,
        }
    }

    /// The request's headers have arrived (`end_of_stream`: and it has no body): allow, deny, or
    /// pause it while its token is checked.
    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return refuse(&self.host, "the filter is not configured", "certbound");
        };
        // One host call for every header: each call crosses into the host and back.
        let headers = self.host.request_headers();
        let peer = HostPeer {
            host: &self.host,
            worker: &worker,
            thumbprint: OnceCell::new(),
        };
        // Only a request with a body can carry a form: a GET costs nothing here.
        self.form_body = !end_of_stream
            && headers
                .get("content-type")
                .is_some_and(|v| token::is_form(&v));
        let sent_path = match self.sent_path(&worker) {
            Ok(p) => p,
            Err(why) => return refuse(&self.host, why, &worker.config.realm),
        };
        let sent_path = sent_path.as_deref().map(String::from_utf8_lossy);
        let facts = RequestFacts {
            context_id: self.id,
            headers: &headers,
            sent_path: sent_path.as_deref(),
            peer: &peer,
            now: worker.clock.get(),
        };
        let start = match worker.state.try_borrow_mut() {
            Ok(mut st) => flow::on_request(&worker.config, &mut st, &self.host, facts),
            Err(_) => return refuse(&self.host, "the worker is busy", &worker.config.realm),
        };
        self.thumbprint = peer.thumbprint.get().copied().flatten();
        match start {
            Start::Decided(verdict) => self.apply(&worker, &verdict),
            Start::Wait(key) => {
                self.pending = Some(key);
                Action::Pause
            }
            Start::Dispatch(key, call) => {
                self.pending = Some(key);
                self.dispatch(&worker, key, &call);
                Action::Pause
            }
        }
    }

    /// The path as the client sent it, where the proxy's `:path` is not that: NGINX's is its
    /// decoded, normalized URI, and `proxy_pass` forwards the client's. Err: refuse the request.
    fn sent_path(&self, worker: &Worker) -> Result<Option<Vec<u8>>, &'static str> {
        let sent = || self.host.property(&["ngx", "request_uri"]);
        match worker.proxy {
            Proxy::Nginx => sent().map(Some).ok_or("the request's path cannot be read"),
            Proxy::Envoy => {
                // `Host::proxy` tells the proxies apart by a side effect: the first request checks
                // the answer against NGINX's variables, which Envoy does not have. Taken for
                // Envoy, NGINX would forward the headers certbound removes: fail closed.
                if !worker.proxy_checked.replace(true) && sent().is_some() {
                    worker.proxy_mistaken.set(true);
                    self.host.log(
                        Level::Error,
                        "this proxy was taken for Envoy but has NGINX's variables: every request is refused",
                    );
                }
                match worker.proxy_mistaken.get() {
                    true => Err("the proxy is not known"),
                    false => Ok(None),
                }
            }
        }
    }

    /// The answer to this context's call has arrived (`headers` is 0 when the call failed).
    pub fn on_call_response(&mut self, headers: usize, body_size: usize) {
        let (Some(worker), Some(key)) = (self.worker.clone(), self.pending) else {
            return;
        };
        let now = self.host.now();
        let (next, notices) = match worker.state.try_borrow_mut() {
            Ok(mut st) => {
                let limit = flow::answer_limit(&worker.config, &st, &key);
                let answer = if headers == 0 {
                    // The call failed (reset, timeout, no upstream), perhaps after part of the
                    // answer had come: nothing is read (Envoy answers reads with an error then).
                    CallAnswer::failed()
                } else {
                    self.host.call_answer(body_size, limit)
                };
                let next = flow::on_answer(
                    &worker.config,
                    &mut st,
                    &self.host,
                    key,
                    self.id,
                    answer,
                    now,
                );
                (next, std::mem::take(&mut st.notices))
            }
            Err(_) => return,
        };
        for notice in &notices {
            self.host.log(Level::Warn, notice);
        }
        match next {
            Next::Dispatch(call) => self.dispatch(&worker, key, &call),
            Next::Wait => {}
            Next::Decided(verdicts) => {
                self.pending = None;
                self.apply_all(&worker, &verdicts);
            }
        }
    }

    /// Body data of a request that has gone on (Envoy holds a paused request's body): a form body
    /// is buffered whole and checked for a second token; any other passes.
    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.form_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.check_form_body(body_size)
    }

    /// Trailers end a body whose last data did not: the form body is checked now, else it would
    /// go on with them unchecked.
    pub fn on_request_trailers(&mut self) -> Action {
        if !self.form_body {
            return Action::Continue;
        }
        // All that is buffered: the host answers with what it has.
        self.check_form_body(usize::MAX)
    }

    fn check_form_body(&mut self, body_size: usize) -> Action {
        // Checked once: what comes after (nothing, for a whole body) passes.
        self.form_body = false;
        let Some(worker) = self.worker.clone() else {
            return refuse(&self.host, "the filter is not configured", "certbound");
        };
        let body = self.host.request_body(body_size);
        let verdict = match worker.state.try_borrow_mut() {
            Ok(mut st) => {
                flow::on_form_body(&worker.config, &mut st, self.id, self.thumbprint, &body)
            }
            Err(_) => return refuse(&self.host, "the worker is busy", &worker.config.realm),
        };
        match verdict {
            Some(verdict) => self.apply(&worker, &verdict),
            None => Action::Continue,
        }
    }

    /// The stream is gone. If its call was out, whoever waits on it must not hang.
    pub fn on_done(&mut self) {
        let (Some(worker), Some(key)) = (self.worker.clone(), self.pending.take()) else {
            return;
        };
        let verdicts = match worker.state.try_borrow_mut() {
            Ok(mut st) => {
                let now = self.host.now();
                flow::on_gone(&worker.config, &mut st, &self.host, key, self.id, now)
            }
            Err(_) => return,
        };
        self.apply_all(&worker, &verdicts);
    }

    fn dispatch(&mut self, worker: &Worker, key: CheckId, call: &flow::Call) {
        let sent = self.host.dispatch(call);
        let Ok(mut st) = worker.state.try_borrow_mut() else {
            return;
        };
        match sent {
            Ok(_) => st.tally.count(call.kind.metric()),
            Err(status) => {
                let what = format!("{:?} dispatch failed: {status}", call.kind);
                self.host.log(Level::Warn, &what);
                let now = self.host.now();
                let verdicts =
                    flow::on_dispatch_failed(&worker.config, &mut st, &self.host, key, now);
                drop(st);
                self.pending = None;
                self.apply_all(worker, &verdicts);
            }
        }
    }

    /// Carries out the verdicts of several paused requests, each in its own context; a request
    /// whose stream has gone is skipped.
    fn apply_all(&self, worker: &Worker, verdicts: &[(u32, Verdict)]) {
        for (context_id, verdict) in verdicts {
            // Where contexts cannot be switched (NGINX) a verdict for another request would land
            // on this one; none is made there (no request waits for another's call).
            if *context_id != self.id && !worker.proxy.traits().single_flight {
                self.host
                    .log(Level::Error, "a verdict for another request was dropped");
                continue;
            }
            if self.host.set_effective_context(*context_id)
                && matches!(self.apply(worker, verdict), Action::Continue)
            {
                self.host.resume_request();
            }
        }
        // Host calls made after this act on this context again.
        if verdicts.iter().any(|(id, _)| *id != self.id) {
            self.host.set_effective_context(self.id);
        }
    }

    /// Carries out one verdict on the current context: header writes, or the local reply.
    fn apply(&self, worker: &Worker, verdict: &Verdict) -> Action {
        match verdict {
            Verdict::Allow(entry, strip, xfcc) => {
                let xfcc = xfcc.as_deref();
                for (name, value) in flow::header_writes(&worker.config, entry, strip, xfcc) {
                    self.host.set_request_header(name, value);
                }
                Action::Continue
            }
            Verdict::Deny(denial) => {
                self.host.log(Level::Warn, &denial.log);
                self.host.send_reply(&denial.reply);
                Action::Pause
            }
        }
    }
}

impl Context for Http<ProxyHost> {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        self.on_call_response(headers, body);
    }

    fn on_done(&mut self) -> bool {
        Http::on_done(self);
        true
    }
}

impl HttpContext for Http<ProxyHost> {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on_request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_request_body(body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.on_request_trailers()
    }
}
