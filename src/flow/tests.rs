//! The request flow driven natively through the fake host: every branch, asserted by outcome.

use crate::binding::Thumbprint;
use crate::config::minimal_config as minimal;
use crate::fake_host::{Fate, Proxy};
use crate::flow::CallKind;
use certbound_jose::testing::{jwks_json, other_ps256, ps256, sign, sign_with, NOW};
use serde_json::{json, Value};

const MINE: Thumbprint = Thumbprint([1; 32]);
const OTHER: Thumbprint = Thumbprint([2; 32]);
const PATH: &str = "/api/transactions";

fn config(format: &str) -> Value {
    let mut v = minimal(format);
    v["claim_headers"] = json!({"client_id": "x-client-id"});
    v["routes"] = json!([
        {"path_prefix": "/api/admin", "required_scopes": ["admin"]},
        {"path_prefix": "/api/open", "require_binding": false}
    ]);
    v
}

/// RFC 7662 members of an active token bound to `cert`.
fn members(cert: Thumbprint) -> Value {
    json!({"active": true, "scope": "transactions read", "client_id": "partner-client",
           "exp": NOW + 300, "jti": "j-1", "cnf": {"x5t#S256": cert.to_x5t()}})
}

fn active_json(cert: Thumbprint) -> Vec<u8> {
    members(cert).to_string().into_bytes()
}

/// A phantom JWT bound to `cert`, signed by the key set's key.
fn phantom(cert: Thumbprint) -> String {
    sign(
        json!({"scope": "transactions", "client_id": "partner-client",
               "cnf": {"x5t#S256": cert.to_x5t()}}),
        NOW + 300,
        None,
    )
}

fn calls_of(p: &Proxy, kind: CallKind) -> usize {
    p.calls().iter().filter(|(_, c)| c.kind == kind).count()
}

fn error_of(p: &Proxy, ctx: u32) -> String {
    match p.fate(ctx) {
        Fate::Replied(r) => {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["error"].as_str().unwrap().to_string()
        }
        other => panic!("request {ctx} was not answered locally: {other:?}"),
    }
}

fn challenge_of(p: &Proxy, ctx: u32) -> Option<String> {
    match p.fate(ctx) {
        Fate::Replied(r) => r
            .headers
            .iter()
            .find(|(k, _)| *k == "www-authenticate")
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

#[test]
fn a_miss_is_introspected_once_then_hits_are_decided_from_the_cache() {
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok-1", Some(MINE));
    assert_eq!(p.fate(a), Fate::Paused);
    let calls = p.calls();
    assert_eq!(calls.len(), 1);
    let (from, call) = &calls[0];
    assert_eq!(
        (*from, call.kind, call.cluster.as_str()),
        (a, CallKind::Introspection, "idsvr")
    );
    let body = String::from_utf8(call.body.clone().unwrap()).unwrap();
    assert!(body.starts_with("token=tok-1&"), "{body}");

    p.answer(a, 200, &[], &active_json(MINE));
    assert_eq!(p.status(a), 200);
    // `json` forwards the client's Authorization, and the claim header from the token.
    assert_eq!(
        p.upstream_header(a, "authorization").as_deref(),
        Some("Bearer tok-1")
    );
    assert_eq!(
        p.upstream_header(a, "x-client-id").as_deref(),
        Some("partner-client")
    );

    let b = p.get(PATH, "tok-1", Some(MINE));
    assert_eq!(p.status(b), 200);
    let c = p.get(PATH, "tok-1", Some(OTHER));
    assert_eq!(p.status(c), 401);
    assert_eq!(p.calls().len(), 1, "hits make no call");
    assert_eq!(p.counter("cache_misses"), 1);
    assert_eq!(p.counter("cache_hits"), 2);
    assert_eq!(p.counter("introspection_calls"), 1);
    assert_eq!(p.counter("requests_allowed"), 2);
    assert_eq!(p.counter("requests_denied.certificate_mismatch"), 1);
}

#[test]
fn counters_and_the_clock_cost_a_hit_no_host_call_and_reach_the_host_on_the_timer() {
    let mut p = Proxy::new(&config("json"), NOW);
    assert_eq!(p.host.0.borrow().tick_ms, Some(crate::root::TICK_MS));
    let a = p.get(PATH, "tok", Some(MINE));
    p.answer(
        a,
        200,
        &[("cache-control", "max-age=5")],
        &active_json(MINE),
    );
    p.get(PATH, "tok", Some(MINE));
    assert!(
        p.host.0.borrow().counters.is_empty(),
        "nothing counted before the timer"
    );
    assert_eq!(p.counter("cache_hits"), 1);
    // The clock a hit sees moves on the timer: the entry expires 5 s after it was made.
    p.advance(4);
    p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.calls().len(), 1);
    p.advance(1);
    let late = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.fate(late), Fate::Paused);
    assert_eq!(p.calls().len(), 2, "an expired entry is introspected again");
}

#[test]
fn requests_refused_before_any_call() {
    let mut p = Proxy::new(&config("json"), NOW);
    type Case<'a> = (&'a [(&'a str, &'a str)], u32, &'a str, &'a str);
    let table: [Case; 5] = [
        (&[(":path", PATH)], 401, "unauthorized", "missing_token"),
        (
            &[(":path", PATH), ("authorization", "Basic Zm9vOmJhcg==")],
            401,
            "unauthorized",
            "missing_token",
        ),
        (
            &[(":path", PATH), ("authorization", "Bearer a b")],
            400,
            "invalid_request",
            "invalid_request",
        ),
        (
            &[(":path", PATH), ("authorization", "Bearer ")],
            400,
            "invalid_request",
            "invalid_request",
        ),
        (
            &[
                (":path", PATH),
                ("authorization", "Bearer x"),
                ("authorization", "Bearer y"),
            ],
            400,
            "invalid_request",
            "invalid_request",
        ),
    ];
    for (headers, status, error, _) in table {
        let r = p.request(headers, Some(MINE));
        assert_eq!(p.status(r), status, "{headers:?}");
        assert_eq!(error_of(&p, r), error, "{headers:?}");
    }
    assert!(p.calls().is_empty());
    assert_eq!(p.counter("requests_denied.missing_token"), 2);
    assert_eq!(p.counter("requests_denied.invalid_request"), 3);
    // RFC 6750 section 3.1: no error attribute without authentication.
    let bare = p.request(&[(":path", PATH)], Some(MINE));
    assert_eq!(
        challenge_of(&p, bare).as_deref(),
        Some("Bearer realm=\"certbound\"")
    );
}

/// Each way an introspection can fail or answer: status, body, headers → reply, and whether the
/// outcome was cached (a second request makes no call).
#[test]
fn every_introspection_answer_has_its_outcome() {
    let big = vec![b' '; 70_000];
    let active = active_json(MINE);
    let unbound = json!({"active": true, "scope": "x", "exp": NOW + 300}).to_string();
    type Case<'a> = (&'a str, Option<(u16, &'a [u8])>, u32, &'a str, bool);
    let table: [Case; 13] = [
        ("active and bound", Some((200, &active)), 200, "", true),
        (
            "inactive",
            Some((200, br#"{"active":false}"#)),
            401,
            "invalid_token",
            true,
        ),
        (
            "not bound",
            Some((200, unbound.as_bytes())),
            401,
            "invalid_token",
            true,
        ),
        ("call failed", None, 503, "temporarily_unavailable", false),
        (
            "server error",
            Some((500, b"")),
            503,
            "temporarily_unavailable",
            false,
        ),
        (
            "client refused",
            Some((401, b"")),
            503,
            "temporarily_unavailable",
            false,
        ),
        (
            "unexpected status",
            Some((418, b"")),
            502,
            "server_error",
            false,
        ),
        (
            "not JSON",
            Some((200, b"<html>")),
            502,
            "server_error",
            false,
        ),
        (
            "active not boolean",
            Some((200, br#"{"active":"true"}"#)),
            502,
            "server_error",
            false,
        ),
        ("no active", Some((200, b"{}")), 502, "server_error", false),
        ("too large", Some((200, &big)), 502, "server_error", false),
        (
            "exp not a number",
            Some((200, br#"{"active":true,"exp":"soon"}"#)),
            502,
            "server_error",
            false,
        ),
        (
            "cnf not canonical",
            Some((200, br#"{"active":true,"cnf":{"x5t#S256":"abc"}}"#)),
            502,
            "server_error",
            false,
        ),
    ];
    for (what, answer, status, error, cached) in table {
        let mut p = Proxy::new(&config("json"), NOW);
        let a = p.get(PATH, "tok", Some(MINE));
        match answer {
            Some((code, body)) => p.answer(a, code, &[], body),
            None => p.fail_call(a),
        }
        assert_eq!(p.status(a), status, "{what}");
        if status != 200 {
            assert_eq!(error_of(&p, a), error, "{what}");
        }
        if status >= 500 {
            assert_eq!(challenge_of(&p, a), None, "{what}: no challenge on 5xx");
            assert_eq!(p.counter("introspection_failures"), 1, "{what}");
        }
        let again = p.get(PATH, "tok", Some(MINE));
        assert_eq!(
            p.calls().len(),
            if cached { 1 } else { 2 },
            "{what}: cached?"
        );
        if cached {
            assert_eq!(p.status(again), status, "{what}: the cached outcome");
        }
    }
}

#[test]
fn a_call_that_cannot_be_sent_is_503() {
    let mut p = Proxy::new(&config("json"), NOW);
    p.host.0.borrow_mut().refuse_dispatch = true;
    let a = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.status(a), 503);
    assert_eq!(p.counter("introspection_calls"), 0);
    assert_eq!(p.counter("introspection_failures"), 1);
    // Nothing is left in flight: the next request tries again.
    p.host.0.borrow_mut().refuse_dispatch = false;
    let b = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.fate(b), Fate::Paused);
    assert_eq!(p.calls().len(), 1);
}

#[test]
fn concurrent_requests_share_one_call_and_are_each_decided_with_their_own_certificate_and_route() {
    let mut p = Proxy::new(&config("json"), NOW);
    let first = p.get(PATH, "tok", Some(MINE));
    let same = p.get(PATH, "tok", Some(MINE));
    let stolen = p.get(PATH, "tok", Some(OTHER));
    let no_cert = p.get(PATH, "tok", None);
    let admin = p.get("/api/admin/x", "tok", Some(MINE));
    let other_token = p.get(PATH, "tok-2", Some(MINE));
    assert_eq!(
        calls_of(&p, CallKind::Introspection),
        2,
        "one call per token"
    );
    assert_eq!(
        p.status(no_cert),
        401,
        "refused at once: binding is required"
    );
    for r in [first, same, stolen, admin, other_token] {
        assert_eq!(p.fate(r), Fate::Paused);
    }
    p.answer(first, 200, &[], &active_json(MINE));
    assert_eq!(p.status(first), 200);
    assert_eq!(p.status(same), 200);
    assert_eq!(p.status(stolen), 401);
    assert_eq!(p.status(admin), 403);
    assert_eq!(
        challenge_of(&p, admin).unwrap(),
        "Bearer realm=\"certbound\", error=\"insufficient_scope\", error_description=\"the access token lacks a required scope\", scope=\"admin\""
    );
    assert_eq!(
        p.fate(other_token),
        Fate::Paused,
        "another token's call is still out"
    );
    assert_eq!(p.counter("requests_denied.certificate_mismatch"), 1);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    assert_eq!(p.counter("requests_denied.insufficient_scope"), 1);
    // The request without a certificate was refused before the cache was looked at.
    assert_eq!(p.counter("cache_misses"), 5);
}

#[test]
fn waiters_share_a_failure_and_are_not_cached() {
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    let b = p.get(PATH, "tok", Some(MINE));
    p.fail_call(a);
    assert_eq!((p.status(a), p.status(b)), (503, 503));
    assert_eq!(p.counter("introspection_failures"), 1);
    let c = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.fate(c), Fate::Paused);
    assert_eq!(p.calls().len(), 2);
}

#[test]
fn a_request_that_goes_away_releases_its_waiters() {
    let mut p = Proxy::new(&config("json"), NOW);
    let caller = p.get(PATH, "tok", Some(MINE));
    let w1 = p.get(PATH, "tok", Some(MINE));
    let w2 = p.get(PATH, "tok", Some(MINE));
    // A waiter going away changes nothing for the others.
    p.gone(w2);
    assert_eq!(p.fate(w1), Fate::Paused);
    p.gone(caller);
    assert_eq!(
        p.status(w1),
        503,
        "the caller's waiters are answered, not left hanging"
    );
    assert_eq!(error_of(&p, w1), "temporarily_unavailable");
    let gone_replies = p.host.0.borrow().streams[&w2].replies.len();
    assert_eq!(gone_replies, 0, "a gone request gets nothing");
    // The next request checks the token anew; a late answer to the old call changes nothing.
    let next = p.get(PATH, "tok", Some(MINE));
    assert_eq!(calls_of(&p, CallKind::Introspection), 2);
    p.answer(caller, 200, &[], &active_json(MINE));
    assert_eq!(p.fate(next), Fate::Paused);
    p.answer(next, 200, &[], &active_json(MINE));
    assert_eq!(p.status(next), 200);
}

#[test]
fn a_waiter_gone_before_the_answer_is_skipped() {
    let mut p = Proxy::new(&config("json"), NOW);
    let caller = p.get(PATH, "tok", Some(MINE));
    let waiter = p.get(PATH, "tok", Some(MINE));
    // The proxy destroyed the stream without on_done (as after a reset): its context is unknown.
    p.stream_mut(waiter).gone = true;
    p.answer(caller, 200, &[], &active_json(MINE));
    assert_eq!(p.status(caller), 200);
    assert_eq!(p.fate(waiter), Fate::Paused);
}

#[test]
fn answers_that_may_not_be_cached_still_decide_everyone_waiting() {
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    let b = p.get(PATH, "tok", Some(OTHER));
    p.answer(
        a,
        200,
        &[("cache-control", "no-store, max-age=0")],
        &active_json(MINE),
    );
    assert_eq!((p.status(a), p.status(b)), (200, 401));
    p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.calls().len(), 2, "max-age=0 is not cached");

    // A token whose exp has passed while its call was out is inactive.
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    p.host.0.borrow_mut().now = NOW + 400;
    p.answer(a, 200, &[], &active_json(MINE));
    assert_eq!(p.status(a), 401);
    assert_eq!(error_of(&p, a), "invalid_token");
}

#[test]
fn entries_expire_with_their_ttl_and_negative_ttl() {
    let mut v = config("json");
    v["cache"] = json!({"max_ttl_seconds": 60, "negative_ttl_seconds": 5});
    let mut p = Proxy::new(&v, NOW);
    let a = p.get(PATH, "good", Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    let b = p.get(PATH, "bad", Some(MINE));
    p.answer(b, 200, &[], br#"{"active":false}"#);
    p.advance(5);
    p.get(PATH, "good", Some(MINE));
    let bad_again = p.get(PATH, "bad", Some(MINE));
    assert_eq!(
        p.fate(bad_again),
        Fate::Paused,
        "the negative entry expired"
    );
    assert_eq!(p.calls().len(), 3);
    p.advance(55);
    let good_again = p.get(PATH, "good", Some(MINE));
    assert_eq!(
        p.fate(good_again),
        Fate::Paused,
        "the positive entry expired"
    );
}

#[test]
fn claim_headers_from_the_client_never_pass() {
    let mut p = Proxy::new(&config("json"), NOW);
    let headers = [
        (":path", PATH),
        ("authorization", "Bearer tok"),
        ("x-client-id", "admin"),
    ];
    let a = p.request(&headers, Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    assert_eq!(
        p.upstream_header(a, "x-client-id").as_deref(),
        Some("partner-client")
    );
    // A token without the claim: the client's header is removed, not kept.
    let mut p = Proxy::new(&config("json"), NOW);
    let mut m = members(MINE);
    m.as_object_mut().unwrap().remove("client_id");
    let a = p.request(&headers, Some(MINE));
    p.answer(a, 200, &[], m.to_string().as_bytes());
    assert_eq!(p.status(a), 200);
    assert_eq!(p.upstream_header(a, "x-client-id"), None);
}

#[test]
fn the_route_decides_whether_binding_is_required() {
    let unbound = json!({"active": true, "scope": "x", "exp": NOW + 300}).to_string();
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get("/api/open/x", "tok", None);
    let b = p.get(PATH, "tok", Some(MINE));
    p.answer(a, 200, &[], unbound.as_bytes());
    assert_eq!(p.status(a), 200);
    assert_eq!(p.status(b), 401);
    assert_eq!(p.counter("requests_denied.token_not_bound"), 1);
}

#[test]
fn a_phantom_jwt_is_verified_with_a_key_set_fetched_once() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let jwks = jwks_json(&[ps256()]);
    let a = p.get(PATH, "tok-a", Some(MINE));
    let waiter = p.get(PATH, "tok-a", Some(OTHER));
    let jwt = phantom(MINE);
    p.answer(a, 200, &[], jwt.as_bytes());
    assert_eq!(calls_of(&p, CallKind::KeySet), 1);
    let (from, keys_call) = p.calls()[1].clone();
    assert_eq!(from, a, "the key set is asked for from the same context");
    assert!(keys_call.headers.contains(&(":path", "/jwks".to_string())));
    assert_eq!(p.fate(a), Fate::Paused);
    p.answer(a, 200, &[], jwks.as_bytes());
    assert_eq!(p.status(a), 200);
    assert_eq!(p.status(waiter), 401);
    // The upstream gets the verified JWT in place of the opaque token.
    assert_eq!(
        p.upstream_header(a, "authorization"),
        Some(format!("Bearer {jwt}"))
    );

    // Another token: the key set is this worker's already.
    let b = p.get(PATH, "tok-b", Some(MINE));
    p.answer(b, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(p.status(b), 200);
    assert_eq!(calls_of(&p, CallKind::KeySet), 1);
    assert_eq!(p.counter("jwks_fetches"), 1);
}

#[test]
fn an_unknown_kid_refetches_the_key_set_at_most_once_per_interval() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
    assert_eq!(p.status(a), 200);
    let rotated = sign_with(
        other_ps256(),
        json!({"scope": "transactions", "cnf": {"x5t#S256": MINE.to_x5t()}}),
        NOW + 300,
        None,
    );
    // Within the interval: no refetch, the unknown key is a bad answer.
    let b = p.get(PATH, "tok-b", Some(MINE));
    p.answer(b, 200, &[], rotated.as_bytes());
    assert_eq!(p.status(b), 502);
    assert_eq!(calls_of(&p, CallKind::KeySet), 1);
    // After it: one refetch. A fresh key set that still lacks the key is final for this check.
    p.advance(30);
    let c = p.get(PATH, "tok-c", Some(MINE));
    p.answer(c, 200, &[], rotated.as_bytes());
    assert_eq!(calls_of(&p, CallKind::KeySet), 2);
    p.answer(c, 200, &[], jwks_json(&[ps256()]).as_bytes());
    assert_eq!(p.status(c), 502);
    assert_eq!(calls_of(&p, CallKind::KeySet), 2);
    // Another interval later, the refetch brings the new key.
    p.advance(30);
    let d = p.get(PATH, "tok-d", Some(MINE));
    p.answer(d, 200, &[], rotated.as_bytes());
    p.answer(d, 200, &[], jwks_json(&[ps256(), other_ps256()]).as_bytes());
    assert_eq!(p.status(d), 200);
    assert_eq!(calls_of(&p, CallKind::KeySet), 3);
}

#[test]
fn a_key_set_with_keys_the_filter_cannot_use_still_serves_the_others_and_names_them_once() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let mut jwks: Value = serde_json::from_str(&jwks_json(&[ps256()])).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.insert(0, json!({"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"}));
    keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
    keys.push(json!("not a key"));
    let a = p.get(PATH, "tok-a", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(a, 200, &[], jwks.to_string().as_bytes());
    assert_eq!(p.status(a), 200);
    let warnings = |p: &Proxy| {
        let host = p.host.0.borrow();
        let lines: Vec<String> = host
            .logs
            .iter()
            .filter(|(_, line)| line.contains("unusable keys"))
            .map(|(_, line)| line.clone())
            .collect();
        lines
    };
    let logged = warnings(&p);
    assert_eq!(logged.len(), 1, "{logged:?}");
    for part in [
        "key 0 (kid \"-\")",
        "key 2 (kid \"hmac\")",
        "key 3 (kid \"-\")",
    ] {
        assert!(logged[0].contains(part), "{part} in {logged:?}");
    }
    // The next check uses this worker's copy: nothing is logged again.
    let b = p.get(PATH, "tok-b", Some(MINE));
    p.answer(b, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(p.status(b), 200);
    assert_eq!(warnings(&p).len(), 1);
}

#[test]
fn another_workers_key_set_in_shared_data_is_used() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
    // A second worker of the same VM id: same shared data, its own state.
    let shared = p.host.0.borrow().shared.clone();
    let mut q = Proxy::new(&config("jwt"), NOW);
    q.host.0.borrow_mut().shared = shared;
    let b = q.get(PATH, "tok-a", Some(MINE));
    assert_eq!(q.status(b), 200, "the token entry is in shared data");
    let c = q.get(PATH, "tok-c", Some(MINE));
    q.answer(c, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(q.status(c), 200);
    assert_eq!(calls_of(&q, CallKind::KeySet), 0);
}

#[test]
fn every_key_set_failure_has_its_outcome() {
    type Case<'a> = (&'a str, Option<(u16, &'a [u8])>, u32);
    let table: [Case; 6] = [
        ("call failed", None, 503),
        ("server error", Some((503, b"")), 503),
        ("not found", Some((404, b"")), 502),
        ("not JSON", Some((200, b"<html>")), 502),
        (
            "no usable key",
            Some((200, br#"{"keys":[{"kty":"oct","k":"AA"}]}"#)),
            502,
        ),
        ("too large", Some((200, &[b' '; 70_000])), 502),
    ];
    for (what, answer, status) in table {
        let mut p = Proxy::new(&config("jwt"), NOW);
        let a = p.get(PATH, "tok", Some(MINE));
        let waiter = p.get(PATH, "tok", Some(MINE));
        p.answer(a, 200, &[], phantom(MINE).as_bytes());
        match answer {
            Some((code, body)) => p.answer(a, code, &[], body),
            None => p.fail_call(a),
        }
        assert_eq!((p.status(a), p.status(waiter)), (status, status), "{what}");
        assert_eq!(p.counter("introspection_failures"), 1, "{what}");
    }
}

#[test]
fn the_key_set_call_has_its_own_timeout_and_size_limit() {
    let mut v = config("jwt");
    v["jwt"]["jwks"]["timeout_ms"] = json!(700);
    v["jwt"]["jwks"]["max_body_bytes"] = json!(100_000);
    v["introspection"]["max_body_bytes"] = json!(4096);
    let mut p = Proxy::new(&v, NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    let mut jwks: Value = serde_json::from_str(&jwks_json(&[ps256()])).unwrap();
    jwks["padding"] = json!("x".repeat(50_000));
    p.answer(a, 200, &[], jwks.to_string().as_bytes());
    assert_eq!(
        p.status(a),
        200,
        "a key set above the introspection limit is read"
    );
    let key_set_call = &p.calls()[1].1;
    assert_eq!(
        (key_set_call.kind, key_set_call.timeout_ms),
        (CallKind::KeySet, 700)
    );
    assert_eq!(p.calls()[0].1.timeout_ms, 2000);
}

#[test]
fn jwt_answers_that_fail_verification() {
    let mut v = config("jwt");
    v["jwt"]["clock_skew_seconds"] = json!(10);
    let bound = json!({"scope": "transactions", "cnf": {"x5t#S256": MINE.to_x5t()}});
    let expired = sign(bound.clone(), NOW - 20, None);
    let within_skew = sign(bound.clone(), NOW - 5, None);
    let tampered = {
        let t = phantom(MINE);
        let (head, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    type Case<'a> = (&'a str, &'a [u8], u32);
    let table: [Case; 5] = [
        ("expired", expired.as_bytes(), 401),
        ("expired within the skew", within_skew.as_bytes(), 200),
        ("bad signature", tampered.as_bytes(), 502),
        ("not a JWT", b"a.b", 502),
        ("empty body: inactive", b"", 401),
    ];
    for (what, body, status) in table {
        let mut p = Proxy::new(&v, NOW);
        let a = p.get(PATH, "tok", Some(MINE));
        p.answer(a, 200, &[], body);
        if p.fate(a) == Fate::Paused {
            p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
        }
        assert_eq!(p.status(a), status, "{what}");
    }
}

#[test]
fn an_rfc_9701_answer_is_read_from_its_token_introspection_claim() {
    let mut p = Proxy::new(&config("introspection-jwt"), NOW);
    let claims = json!({"token_introspection": members(MINE)});
    let jwt = sign(claims, NOW + 300, Some("token-introspection+jwt"));
    let a = p.get(PATH, "tok", Some(MINE));
    p.answer(a, 200, &[], jwt.as_bytes());
    p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
    assert_eq!(p.status(a), 200);
    assert_eq!(
        p.upstream_header(a, "authorization"),
        Some(format!("Bearer {jwt}"))
    );
}

#[test]
fn an_unconfigured_filter_refuses_every_request() {
    let mut bad = minimal("json");
    bad["bogus"] = json!(1);
    assert!(Proxy::try_new(&bad, NOW).is_none());
    let mut p = Proxy::unconfigured();
    let a = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.status(a), 503);
    assert!(p.calls().is_empty());
}

#[test]
fn a_deny_is_logged_with_reason_thumbprint_and_jti_and_never_the_token() {
    let secret = "opaque-secret-token-4711";
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, secret, Some(MINE));
    let stolen = p.get(PATH, secret, Some(OTHER));
    p.answer(a, 200, &[], &active_json(MINE));
    assert_eq!(p.status(stolen), 401);
    let bad = p.get(PATH, "garbage-token-0815", Some(MINE));
    p.answer(bad, 200, &[], b"<html>");
    let logs = p.host.0.borrow().logs.clone();
    let denials: Vec<&String> = logs
        .iter()
        .filter(|(level, line)| *level == crate::host::Level::Warn && line.starts_with("denied "))
        .map(|(_, line)| line)
        .collect();
    assert_eq!(denials.len(), 2, "one line per deny: {logs:?}");
    assert!(
        denials[0].contains("certificate_mismatch"),
        "{}",
        denials[0]
    );
    assert!(denials[0].contains(&OTHER.to_x5t()), "{}", denials[0]);
    assert!(denials[0].contains("jti=j-1"), "{}", denials[0]);
    assert!(
        denials[1].contains("introspection_bad_response"),
        "{}",
        denials[1]
    );
    for (_, line) in &logs {
        assert!(
            !line.contains(secret) && !line.contains("garbage-token"),
            "a token in the log: {line}"
        );
        assert!(
            !line.contains("s3cret"),
            "the client secret in the log: {line}"
        );
    }
    // The configuration is announced once, by its fingerprint, not its content.
    assert!(logs
        .iter()
        .any(|(l, line)| *l == crate::host::Level::Info
            && line.contains("configuration fingerprint")));
}

#[test]
fn a_token_the_identity_server_refuses_is_inactive_and_cached() {
    for error in ["unsupported_token_type", "invalid_token", "invalid_request"] {
        let mut p = Proxy::new(&config("json"), NOW);
        let a = p.get(PATH, "e30.e30.e30", Some(MINE));
        let body = format!(r#"{{"error":"{error}"}}"#);
        p.answer(a, 400, &[], body.as_bytes());
        assert_eq!(p.status(a), 401, "{error}");
        assert_eq!(error_of(&p, a), "invalid_token", "{error}");
        let again = p.get(PATH, "e30.e30.e30", Some(OTHER));
        assert_eq!(p.status(again), 401, "{error}");
        assert_eq!(p.calls().len(), 1, "{error}: the refusal is cached");
        assert_eq!(p.counter("introspection_failures"), 0, "{error}");
    }
    // Another 400 is the identity server's problem with the filter: 502, not cached.
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    p.answer(a, 400, &[], br#"{"error":"invalid_client"}"#);
    assert_eq!(p.status(a), 502);
}

#[test]
fn a_request_without_certificate_on_a_binding_route_makes_no_call() {
    let mut p = Proxy::new(&config("json"), NOW);
    let refused = p.get(PATH, "tok", None);
    assert_eq!(p.status(refused), 401);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    assert!(p.calls().is_empty());
    // Where binding is optional the token alone decides.
    let open = p.get("/api/open/x", "tok", None);
    assert_eq!(p.fate(open), Fate::Paused);
    assert_eq!(p.calls().len(), 1);
}

#[test]
fn a_token_in_the_query_is_refused_even_beside_one_in_authorization() {
    let mut p = Proxy::new(&config("json"), NOW);
    for path in [
        "/api/transactions?access_token=other",
        "/api/x?a=1&access%5Ftoken=t",
    ] {
        let r = p.request(
            &[(":path", path), ("authorization", "Bearer tok")],
            Some(MINE),
        );
        assert_eq!(p.status(r), 400, "{path}");
        assert_eq!(error_of(&p, r), "invalid_request", "{path}");
    }
    assert!(p.calls().is_empty());
}

#[test]
fn spellings_of_claim_and_certificate_headers_never_reach_the_upstream() {
    let mut p = Proxy::new(&config("json"), NOW);
    let headers = [
        (":path", PATH),
        ("authorization", "Bearer tok"),
        ("x_client_id", "admin"),
        ("X_Client-Id", "admin"),
        ("client-cert", ":MIIB:"),
        ("client_cert_chain", ":MIIB:"),
        ("x-forwarded-client-cert", "Hash=00"),
        ("x-client-identity", "kept"),
    ];
    let a = p.request(&headers, Some(MINE));
    let waiter = p.request(&headers, Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    let hit = p.request(&headers, Some(MINE));
    for r in [a, waiter, hit] {
        let Fate::Forwarded(upstream) = p.fate(r) else {
            panic!("not forwarded")
        };
        let names: Vec<&str> = upstream.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [":path", "authorization", "x-client-identity", "x-client-id"],
            "{upstream:?}"
        );
        assert_eq!(
            p.upstream_header(r, "x-client-id").as_deref(),
            Some("partner-client")
        );
    }
}

#[test]
fn a_pem_without_the_digest_is_no_certificate() {
    let mut p = Proxy::new(&config("json"), NOW);
    // A DER SEQUENCE, which the old fallback would have taken for a certificate.
    let pem = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
    assert!(Thumbprint::from_pem(std::str::from_utf8(pem).unwrap()).is_some());
    let r = p.request_on(
        &[(":path", PATH), ("authorization", "Bearer tok")],
        &[("peer_certificate", pem.as_slice())],
    );
    assert_eq!(p.status(r), 401);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    assert!(p.calls().is_empty());
}

#[test]
fn the_path_decides_the_policy_only_in_a_form_the_upstream_reads_the_same_way() {
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get("/api/transactions", "tok", Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    // The admin route's scope applies however its prefix is spelled in case.
    let upper = p.get("/API/Admin/x", "tok", Some(MINE));
    assert_eq!(p.status(upper), 403);
    for path in [
        "//api/admin/x",
        "/api/./admin/x",
        "/api/x/../admin/x",
        "/api/%61dmin/x",
        "/api%2fadmin/x",
        "/api;v=1/admin/x",
    ] {
        let r = p.get(path, "tok", Some(MINE));
        assert_eq!(p.status(r), 400, "{path}");
        assert_eq!(error_of(&p, r), "invalid_request", "{path}");
    }
    // A prefix covers whole segments only: `/api/adminx` is not under `/api/admin`.
    let beside = p.get("/api/adminx", "tok", Some(MINE));
    assert_eq!(p.status(beside), 200);
    assert_eq!(p.calls().len(), 1);
}

#[test]
fn with_a_default_deny_a_request_no_route_allows_is_403_before_any_call() {
    let mut v = config("json");
    v["default_policy"] = json!("deny");
    let mut p = Proxy::new(&v, NOW);
    let r = p.get("/health", "tok", Some(MINE));
    assert_eq!(p.status(r), 403);
    assert_eq!(error_of(&p, r), "access_denied");
    assert_eq!(challenge_of(&p, r), None);
    assert!(p.calls().is_empty());
    assert_eq!(p.counter("requests_denied.no_route"), 1);
    let routed = p.get("/api/admin/x", "tok", Some(MINE));
    assert_eq!(p.fate(routed), Fate::Paused);
}

#[test]
fn a_token_bound_by_a_method_certbound_cannot_check_is_refused_on_every_route() {
    let dpop = json!({"active": true, "scope": "x", "exp": NOW + 300,
                      "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})
    .to_string();
    let mut p = Proxy::new(&config("json"), NOW);
    let open = p.get("/api/open/x", "tok", Some(MINE));
    p.answer(open, 200, &[], dpop.as_bytes());
    assert_eq!(p.status(open), 401);
    assert_eq!(error_of(&p, open), "invalid_token");
    assert_eq!(p.counter("requests_denied.unverifiable_binding"), 1);
}

#[test]
fn a_token_for_another_api_or_a_refresh_token_is_not_active_here() {
    let mut v = config("json");
    v["introspection"]["audiences"] = json!(["api.example.com"]);
    v["introspection"]["issuer"] = json!("https://login.example.com");
    let mut ours = members(MINE);
    ours["aud"] = json!(["other.example.com", "api.example.com"]);
    ours["iss"] = json!("https://login.example.com");
    let with = |edit: fn(&mut Value)| {
        let mut m = ours.clone();
        edit(&mut m);
        m
    };
    let table: [(&str, Value, u32); 6] = [
        ("ours", ours.clone(), 200),
        (
            "another API",
            with(|m| m["aud"] = json!("billing.example.com")),
            401,
        ),
        (
            "no aud",
            with(|m| {
                m.as_object_mut().unwrap().remove("aud");
            }),
            401,
        ),
        (
            "another issuer",
            with(|m| m["iss"] = json!("https://evil.example.com")),
            401,
        ),
        (
            "a refresh token",
            with(|m| m["token_type"] = json!("refresh_token")),
            401,
        ),
        ("bearer", with(|m| m["token_type"] = json!("Bearer")), 200),
    ];
    for (what, answer, status) in table {
        let mut p = Proxy::new(&v, NOW);
        let a = p.get(PATH, "tok", Some(MINE));
        p.answer(a, 200, &[], answer.to_string().as_bytes());
        assert_eq!(p.status(a), status, "{what}");
        let again = p.get(PATH, "tok", Some(MINE));
        assert_eq!(p.status(again), status, "{what}: cached");
        assert_eq!(p.calls().len(), 1, "{what}");
    }
    // RFC 9701: the audience of the token inside, not the answer JWT's own (the client's).
    let mut v = config("introspection-jwt");
    v["introspection"]["audiences"] = json!(["api.example.com"]);
    for (inner_aud, status) in [("api.example.com", 200), ("billing.example.com", 401)] {
        let mut inner = members(MINE);
        inner["aud"] = json!(inner_aud);
        let jwt = sign(
            json!({ "token_introspection": inner }),
            NOW + 300,
            Some("token-introspection+jwt"),
        );
        let mut p = Proxy::new(&v, NOW);
        let a = p.get(PATH, "tok", Some(MINE));
        p.answer(a, 200, &[], jwt.as_bytes());
        p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
        assert_eq!(p.status(a), status, "{inner_aud}");
    }
}

#[test]
fn one_key_set_call_serves_every_check_that_needs_it() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    let b = p.get(PATH, "tok-b", Some(OTHER));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(b, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(
        calls_of(&p, CallKind::KeySet),
        1,
        "single flight per worker"
    );
    assert_eq!((p.fate(a), p.fate(b)), (Fate::Paused, Fate::Paused));
    p.answer(a, 200, &[], jwks_json(&[ps256()]).as_bytes());
    assert_eq!(p.status(a), 200);
    assert_eq!(p.status(b), 401, "decided with its own certificate");
    assert_eq!(p.counter("jwks_fetches"), 1);
}

#[test]
fn a_failed_key_set_call_fails_its_waiters_and_is_not_retried_at_once() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    let b = p.get(PATH, "tok-b", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(b, 200, &[], phantom(MINE).as_bytes());
    p.fail_call(a);
    assert_eq!((p.status(a), p.status(b)), (503, 503));
    // Within the backoff: 503 at once, no call.
    let c = p.get(PATH, "tok-c", Some(MINE));
    p.answer(c, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(p.status(c), 503);
    assert_eq!(calls_of(&p, CallKind::KeySet), 1);
    // After it, the key set is asked for again.
    p.advance(crate::worker::KEY_SET_BACKOFF_SECONDS);
    let d = p.get(PATH, "tok-d", Some(MINE));
    p.answer(d, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(calls_of(&p, CallKind::KeySet), 2);
    p.answer(d, 200, &[], jwks_json(&[ps256()]).as_bytes());
    assert_eq!(p.status(d), 200);
}

#[test]
fn checks_waiting_for_a_key_set_are_released_when_its_caller_goes_away() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    let b = p.get(PATH, "tok-b", Some(MINE));
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    p.answer(b, 200, &[], phantom(MINE).as_bytes());
    p.gone(a);
    assert_eq!(p.status(b), 503);
    // Nothing is left waiting: the next check makes its own call.
    let c = p.get(PATH, "tok-c", Some(MINE));
    p.answer(c, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(calls_of(&p, CallKind::KeySet), 2);
}

#[test]
fn a_key_set_call_that_cannot_be_sent_is_503() {
    let mut p = Proxy::new(&config("jwt"), NOW);
    let a = p.get(PATH, "tok-a", Some(MINE));
    p.host.0.borrow_mut().refuse_dispatch = true;
    p.answer(a, 200, &[], phantom(MINE).as_bytes());
    assert_eq!(p.status(a), 503);
    assert_eq!(p.counter("jwks_fetches"), 0);
}

#[test]
fn a_second_token_in_a_form_body_is_refused_before_the_body_goes_on() {
    let mut p = Proxy::new(&config("json"), NOW);
    let form = [
        (":method", "POST"),
        (":path", PATH),
        ("authorization", "Bearer tok"),
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
    ];
    let a = p.request(&form, Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    assert!(
        !p.body(a, b"amount=1&", false),
        "a form body is held until it is whole"
    );
    assert!(!p.body(a, b"access_token=stolen", true));
    let replies = p.host.0.borrow().streams[&a].replies.clone();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 400);
    // A body ended by trailers is checked when they come.
    let t = p.request(&form, Some(MINE));
    assert!(!p.body(t, b"access_token=stolen", false));
    assert!(!p.trailers(t));
    assert_eq!(p.host.0.borrow().streams[&t].replies.len(), 1);
    // A form without a token, and a body of another type, go on.
    let b = p.request(&form, Some(MINE));
    assert!(p.body(b, b"amount=1&note=access_token", true));
    let mut json = form;
    json[3] = ("content-type", "application/json");
    let c = p.request(&json, Some(MINE));
    assert!(p.body(c, b"access_token=x", false));
    assert_eq!(p.counter("requests_denied.invalid_request"), 2);
}

/// A request with `headers` (and a bearer token) on a connection with `properties`.
fn on_connection(
    p: &mut Proxy,
    token: &str,
    extra: &[(&str, &str)],
    properties: &[(&str, &[u8])],
) -> u32 {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![
        (":method", "GET"),
        (":path", PATH),
        ("authorization", authorization.as_str()),
    ];
    headers.extend_from_slice(extra);
    p.request_on(&headers, properties)
}

#[test]
fn a_route_requires_a_certificate_or_judges_a_request_without_one_by_its_token() {
    let mut v = config("json");
    v["routes"] = json!([
        {"path_prefix": "/api/optional", "client_certificate": "optional"},
        {"path_prefix": "/api/transactions", "client_certificate": "required", "require_binding": false}
    ]);
    let mut p = Proxy::new(&v, NOW);
    // Required: refused before any call, whatever the token.
    let r = p.get(PATH, "unbound", None);
    assert_eq!((p.status(r), p.calls().len()), (401, 0));
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    // Required without binding: a certificate, and an unbound token, pass.
    let r = p.get(PATH, "unbound", Some(MINE));
    let unbound = json!({"active": true, "scope": "transactions", "exp": NOW + 300});
    p.answer(r, 200, &[], unbound.to_string().as_bytes());
    assert_eq!(p.status(r), 200);
    // Optional: without a certificate the unbound token alone decides...
    let r = p.get("/api/optional", "unbound", None);
    assert_eq!(p.status(r), 200);
    // ...a bound token still needs its certificate, and a presented one is still checked.
    let r = p.get("/api/optional", "bound", None);
    p.answer(r, 200, &[], &active_json(MINE));
    assert_eq!(p.status(r), 401);
    let r = p.get("/api/optional", "bound", Some(OTHER));
    assert_eq!(p.status(r), 401);
    let r = p.get("/api/optional", "bound", Some(MINE));
    assert_eq!(p.status(r), 200);
    assert_eq!(p.counter("requests_denied.certificate_mismatch"), 1);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 2);
}

#[test]
fn allow_lists_read_the_connections_certificate_from_its_own_xfcc() {
    use crate::certificate::tests::{hex, partner, url_encoded_pem};
    let der = partner();
    let cert = Thumbprint::from_der(&der);
    let mut v = config("json");
    v["routes"] = json!([
        {"path_prefix": "/api/transactions", "allowed_certificates": {"dns_sans": ["partner.example.com"]}},
        {"path_prefix": "/api/thumbprint", "allowed_certificates": {"thumbprints": [cert.to_x5t()]}},
        {"path_prefix": "/api/other", "allowed_certificates": {"issuers": ["CN=Other CA"]}}
    ]);
    let mut p = Proxy::new(&v, NOW);
    let digest = hex(&cert);
    let connection: [(&str, &[u8]); 1] = [("sha256_peer_certificate_digest", digest.as_bytes())];
    // What Envoy's SANITIZE_SET with set_current_client_cert_details.cert sets.
    let own = format!("Hash={digest};Cert=\"{}\"", url_encoded_pem(&der));
    let r = on_connection(
        &mut p,
        "tok",
        &[("x-forwarded-client-cert", &own)],
        &connection,
    );
    p.answer(r, 200, &[], &active_json(cert));
    assert_eq!(p.status(r), 200);
    assert_eq!(
        p.upstream_header(r, "x-forwarded-client-cert"),
        None,
        "removed before the upstream"
    );
    // Parsed once: the next request needs no Cert.
    let r = on_connection(&mut p, "tok", &[], &connection);
    assert_eq!(p.status(r), 200);
    // The names are not those allowed: 403 before any call.
    let calls = p.calls().len();
    let other = |p: &mut Proxy, path: &str| {
        let authorization = "Bearer tok".to_string();
        p.request_on(
            &[
                (":method", "GET"),
                (":path", path),
                ("authorization", &authorization),
            ],
            &connection,
        )
    };
    let r = other(&mut p, "/api/other");
    assert_eq!(p.status(r), 403);
    assert_eq!(error_of(&p, r), "access_denied");
    let r = other(&mut p, "/api/thumbprint");
    assert_eq!(p.status(r), 200);
    assert_eq!(p.calls().len(), calls);
    assert_eq!(p.counter("requests_denied.certificate_not_allowed"), 1);

    // Another connection whose certificate is known by its hash only cannot pass name rules;
    // a Cert that is not its own is not taken for it.
    let mut p = Proxy::new(&v, NOW);
    let r = on_connection(&mut p, "tok", &[], &connection);
    assert_eq!(p.status(r), 403);
    let stranger = Thumbprint([5; 32]);
    let stranger_hex = hex(&stranger);
    let r = on_connection(
        &mut p,
        "tok",
        &[("x-forwarded-client-cert", &own)],
        &[("sha256_peer_certificate_digest", stranger_hex.as_bytes())],
    );
    assert_eq!(p.status(r), 403);
    assert_eq!(p.calls().len(), 0);
}

#[test]
fn an_xfcc_source_believes_only_the_trusted_hop() {
    use crate::certificate::tests::hex;
    let mut v = config("json");
    v["client_certificate"] =
        json!({"sources": ["xfcc"], "trusted_hop": {"dns_sans": ["certbound-gateway"]}});
    let mut p = Proxy::new(&v, NOW);
    let gateway = Thumbprint([7; 32]);
    let gateway_hex = hex(&gateway);
    let hop: [(&str, &[u8]); 2] = [
        ("sha256_peer_certificate_digest", gateway_hex.as_bytes()),
        ("dns_san_peer_certificate", b"certbound-gateway"),
    ];
    let anyone: [(&str, &[u8]); 2] = [
        ("sha256_peer_certificate_digest", gateway_hex.as_bytes()),
        ("dns_san_peer_certificate", b"partner.example.com"),
    ];
    let mine = format!("Hash={}", hex(&MINE));
    let r = on_connection(&mut p, "tok", &[("x-forwarded-client-cert", &mine)], &hop);
    p.answer(r, 200, &[], &active_json(MINE));
    assert_eq!(p.status(r), 200);
    assert_eq!(p.upstream_header(r, "x-forwarded-client-cert"), None);
    // The same header from anyone else is not believed: no certificate at all.
    let r = on_connection(
        &mut p,
        "tok",
        &[("x-forwarded-client-cert", &mine)],
        &anyone,
    );
    assert_eq!(p.status(r), 401);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    // Another partner's certificate through the hop: the stolen token is refused.
    let theirs = format!("Hash={}", hex(&OTHER));
    let r = on_connection(&mut p, "tok", &[("x-forwarded-client-cert", &theirs)], &hop);
    assert_eq!(p.status(r), 401);
    assert_eq!(p.counter("requests_denied.certificate_mismatch"), 1);
    // A malformed header from the hop, or two of them: 400.
    let r = on_connection(
        &mut p,
        "tok",
        &[("x-forwarded-client-cert", "Hash=zz")],
        &hop,
    );
    assert_eq!(p.status(r), 400);
    let r = on_connection(
        &mut p,
        "tok",
        &[
            ("x-forwarded-client-cert", &mine),
            ("x-forwarded-client-cert", &mine),
        ],
        &hop,
    );
    assert_eq!(p.status(r), 400);
    // Other spellings are never read, and removed.
    let r = on_connection(
        &mut p,
        "tok",
        &[
            ("x-forwarded-client-cert", &mine),
            ("x_forwarded_client_cert", &theirs),
        ],
        &hop,
    );
    assert_eq!(p.status(r), 200);
    assert_eq!(p.upstream_header(r, "x_forwarded_client_cert"), None);

    // forward_headers passes the hop's header on, never anyone else's.
    v["client_certificate"]["forward_headers"] = json!(true);
    v["client_certificate"]["sources"] = json!(["xfcc", "connection"]);
    v["routes"] = json!([{"path_prefix": "/", "require_binding": false}]);
    let mut p = Proxy::new(&v, NOW);
    let r = on_connection(&mut p, "tok", &[("x-forwarded-client-cert", &mine)], &hop);
    p.answer(r, 200, &[], &active_json(MINE));
    assert_eq!(
        p.upstream_header(r, "x-forwarded-client-cert").as_deref(),
        Some(mine.as_str())
    );
    let unbound = json!({"active": true, "scope": "transactions", "exp": NOW + 300});
    let r = on_connection(
        &mut p,
        "tok-2",
        &[("x-forwarded-client-cert", &mine)],
        &anyone,
    );
    p.answer(r, 200, &[], unbound.to_string().as_bytes());
    assert_eq!(p.status(r), 200);
    assert_eq!(p.upstream_header(r, "x-forwarded-client-cert"), None);
}

#[test]
fn a_cidr_trusts_the_peer_address_only() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let der = crate::certificate::tests::partner();
    let cert = Thumbprint::from_der(&der);
    let mut v = config("json");
    v["client_certificate"] =
        json!({"sources": ["client-cert"], "trusted_hop": {"cidrs": ["127.0.0.2/32"]}});
    let mut p = Proxy::new(&v, NOW);
    let cc = format!(":{}:", STANDARD.encode(&der));
    let hop: [(&str, &[u8]); 1] = [("source.address", b"127.0.0.2:40000")];
    let other: [(&str, &[u8]); 1] = [("source.address", b"127.0.0.1:40000")];
    let r = on_connection(&mut p, "tok", &[("client-cert", &cc)], &hop);
    p.answer(r, 200, &[], &active_json(cert));
    assert_eq!(p.status(r), 200);
    assert_eq!(p.upstream_header(r, "client-cert"), None);
    let r = on_connection(
        &mut p,
        "tok",
        &[("client-cert", &cc), ("x-forwarded-for", "127.0.0.2")],
        &other,
    );
    assert_eq!(p.status(r), 401);
    let r = on_connection(&mut p, "tok", &[("client-cert", &cc)], &[]);
    assert_eq!(p.status(r), 401);
}

#[test]
fn stale_if_error_serves_a_recently_expired_entry_within_its_bound_only() {
    let mut v = config("json");
    v["cache"] = json!({"stale_if_error_seconds": 30});
    let mut p = Proxy::new(&v, NOW);
    let five = [("cache-control", "max-age=5")];
    let r = p.get(PATH, "tok", Some(MINE));
    p.answer(r, 200, &five, &active_json(MINE));
    assert_eq!(p.status(r), 200);
    // Expired 5 s ago; the identity server fails in every way that means "unavailable".
    p.advance(10);
    let r = p.get(PATH, "tok", Some(MINE));
    assert_eq!(
        p.fate(r),
        Fate::Paused,
        "an expired entry is introspected again"
    );
    p.answer(r, 503, &[], b"");
    assert_eq!(p.status(r), 200, "served stale");
    let r = p.get(PATH, "tok", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 200);
    // Binding and scopes are still checked on a stale entry.
    let r = p.get(PATH, "tok", Some(OTHER));
    p.fail_call(r);
    assert_eq!(p.status(r), 401);
    let r = p.get("/api/admin/x", "tok", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 403);
    assert_eq!(p.counter("stale_answers"), 2);
    // A bad answer is not unavailability: no stale answer.
    let r = p.get(PATH, "tok", Some(MINE));
    p.answer(r, 200, &[], b"not json");
    assert_eq!(p.status(r), 502);
    // Past the bound (expired at NOW+5, stale until NOW+35): 503.
    p.advance(26);
    let r = p.get(PATH, "tok", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503);
    assert_eq!(p.counter("stale_answers"), 2);

    // Never past the token's own exp, never for an inactive token.
    let mut p = Proxy::new(&v, NOW);
    let mut soon = members(MINE);
    soon["exp"] = json!(NOW + 8);
    let r = p.get(PATH, "short", Some(MINE));
    p.answer(r, 200, &five, soon.to_string().as_bytes());
    let r = p.get(PATH, "gone", Some(MINE));
    p.answer(r, 200, &[], br#"{"active": false}"#);
    assert_eq!(p.status(r), 401);
    p.advance(7);
    let r = p.get(PATH, "short", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 200, "stale, before exp");
    p.advance(2);
    let r = p.get(PATH, "short", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503, "exp has passed");
    p.advance(5);
    let r = p.get(PATH, "gone", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503, "an inactive entry is never served stale");

    // Only what shared data says counts: this worker's own copy alone (another worker may have
    // learnt the token is inactive, and its answer was evicted since) is not served stale.
    let mut p = Proxy::new(&v, NOW);
    let r = p.get(PATH, "tok", Some(MINE));
    p.answer(r, 200, &five, &active_json(MINE));
    p.advance(6);
    p.host.0.borrow_mut().shared.clear();
    let r = p.get(PATH, "tok", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503);
    // An inactive answer is kept while an older positive one could still be served stale.
    let r = p.get(PATH, "tok-2", Some(MINE));
    p.answer(r, 200, &five, &active_json(MINE));
    p.advance(6);
    let r = p.get(PATH, "tok-2", Some(MINE));
    p.answer(r, 200, &[], br#"{"active": false}"#);
    assert_eq!(p.status(r), 401);
    p.advance(12);
    let r = p.get(PATH, "tok-2", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503, "revoked, never served stale");

    // Off (the default): an expired entry is never used.
    let mut p = Proxy::new(&config("json"), NOW);
    let r = p.get(PATH, "tok", Some(MINE));
    p.answer(r, 200, &five, &active_json(MINE));
    p.advance(6);
    let r = p.get(PATH, "tok", Some(MINE));
    p.fail_call(r);
    assert_eq!(p.status(r), 503);
    assert_eq!(p.counter("stale_answers"), 0);
}

/// NGINX hands header names over as the client sent them: every name certbound reads or removes
/// is found in any letter case.
#[test]
fn header_names_are_read_in_any_letter_case() {
    let mut p = Proxy::new(&config("json"), NOW);
    let r = p.request(
        &[
            (":method", "GET"),
            (":path", PATH),
            ("Authorization", "Bearer tok"),
            ("X-Client-Id", "someone-else"),
            ("Client-Cert", ":AAAA:"),
            ("X-Forwarded-Client-Cert", "Hash=00"),
        ],
        Some(MINE),
    );
    assert_eq!(p.fate(r), Fate::Paused, "the token was found");
    p.answer(r, 200, &[], &active_json(MINE));
    let Fate::Forwarded(headers) = p.fate(r) else {
        panic!("not forwarded: {:?}", p.fate(r));
    };
    let names: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    for gone in ["client-cert", "x-forwarded-client-cert"] {
        assert!(!names.contains(&gone.to_string()), "{gone} in {headers:?}");
    }
    let client_ids: Vec<&(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-client-id"))
        .collect();
    assert_eq!(
        client_ids,
        [&("x-client-id".to_string(), "partner-client".to_string())],
        "only the claim header certbound set"
    );
    // Two spellings of Authorization are two Authorization headers.
    let r = p.request(
        &[
            (":method", "GET"),
            (":path", PATH),
            ("Authorization", "Bearer tok"),
            ("authorization", "Bearer tok"),
        ],
        Some(MINE),
    );
    assert_eq!(p.status(r), 400);
}

// ---------------------------------------------------------------------------------------------
// In NGINX (ngx_wasm_module): the certificate from its PEM once per connection, and no request
// waiting for another's call (the host ignores `proxy_set_effective_context`).

/// A PEM certificate as NGINX's `$ssl_client_raw_cert` has it (a minimal DER SEQUENCE).
const NGINX_PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";

/// A request in NGINX on connection `id`, whose certificate NGINX verified (`verify`) or not.
fn in_nginx(p: &mut Proxy, token: &str, id: &str, verify: &str) -> u32 {
    in_nginx_with(p, token, id, verify, PATH, &[])
}

/// The same, the client having sent `sent` as its path (`:path` is NGINX's normalized `PATH`)
/// and `extra` headers.
fn in_nginx_with(
    p: &mut Proxy,
    token: &str,
    id: &str,
    verify: &str,
    sent: &str,
    extra: &[(&str, &str)],
) -> u32 {
    let props: [(&str, &[u8]); 4] = [
        ("id", id.as_bytes()),
        ("ngx.ssl_client_verify", verify.as_bytes()),
        ("ngx.ssl_client_raw_cert", NGINX_PEM),
        ("ngx.request_uri", sent.as_bytes()),
    ];
    on_connection(p, token, extra, &props)
}

fn reads_of(p: &Proxy, property: &str) -> usize {
    let s = p.host.0.borrow();
    s.property_reads.iter().filter(|r| *r == property).count()
}

#[test]
fn in_nginx_the_certificate_is_read_from_its_pem_once_per_connection() {
    let mine = Thumbprint::from_pem(std::str::from_utf8(NGINX_PEM).unwrap()).unwrap();
    let mut p = Proxy::new_in(true, &config("json"), NOW);
    let a = in_nginx(&mut p, "tok", "7", "SUCCESS");
    p.answer(a, 200, &[], &active_json(mine));
    assert_eq!(p.status(a), 200, "bound to the PEM's thumbprint");
    let b = in_nginx(&mut p, "tok", "7", "SUCCESS");
    let c = in_nginx(&mut p, "tok", "7", "SUCCESS");
    assert_eq!((p.status(b), p.status(c)), (200, 200));
    assert_eq!(
        reads_of(&p, "ngx.ssl_client_raw_cert"),
        1,
        "once per connection"
    );
    assert_eq!(reads_of(&p, "connection.sha256_peer_certificate_digest"), 0);
    // Another connection is read anew.
    let d = in_nginx(&mut p, "tok", "8", "SUCCESS");
    assert_eq!(p.status(d), 200);
    assert_eq!(reads_of(&p, "ngx.ssl_client_raw_cert"), 2);
    // A certificate NGINX did not verify (ssl_verify_client optional_no_ca) is no certificate.
    let e = in_nginx(
        &mut p,
        "tok",
        "9",
        "FAILED:unable to verify the first certificate",
    );
    assert_eq!(p.status(e), 401);
    assert_eq!(p.counter("requests_denied.no_client_certificate"), 1);
    // A stolen token on another partner's connection: that connection's own PEM decides.
    let f = in_nginx(&mut p, "tok-other", "10", "SUCCESS");
    p.answer(f, 200, &[], &active_json(OTHER));
    assert_eq!(p.status(f), 401);
    assert_eq!(p.counter("requests_denied.certificate_mismatch"), 1);
}

#[test]
fn in_envoy_the_connection_id_and_pem_are_never_read() {
    let mut p = Proxy::new(&config("json"), NOW);
    let a = p.get(PATH, "tok", Some(MINE));
    p.answer(a, 200, &[], &active_json(MINE));
    assert_eq!(p.status(a), 200);
    assert_eq!(reads_of(&p, "connection.sha256_peer_certificate_digest"), 1);
    assert_eq!(reads_of(&p, "connection.id"), 0);
    assert_eq!(reads_of(&p, "ngx.ssl_client_raw_cert"), 0);
}

#[test]
fn in_nginx_concurrent_requests_each_make_their_own_call_and_are_each_decided() {
    let mine = Thumbprint::from_pem(std::str::from_utf8(NGINX_PEM).unwrap()).unwrap();
    let mut p = Proxy::new_in(true, &config("json"), NOW);
    let logs = format!("{:?}", p.host.0.borrow().logs);
    assert!(logs.contains("configured in nginx"), "{logs}");
    assert!(
        logs.contains("each make their own introspection call"),
        "{logs}"
    );
    let first = in_nginx(&mut p, "tok", "1", "SUCCESS");
    let second = in_nginx(&mut p, "tok", "2", "SUCCESS");
    let admin = {
        let props: [(&str, &[u8]); 4] = [
            ("id", b"3"),
            ("ngx.ssl_client_verify", b"SUCCESS"),
            ("ngx.ssl_client_raw_cert", NGINX_PEM),
            ("ngx.request_uri", b"/api/admin/x"),
        ];
        let headers = [
            (":method", "GET"),
            (":path", "/api/admin/x"),
            ("authorization", "Bearer tok"),
        ];
        p.request_on(&headers, &props)
    };
    let calls = p.calls();
    let callers: Vec<u32> = calls.iter().map(|(from, _)| *from).collect();
    assert_eq!(callers, vec![first, second, admin], "one call per request");
    // Each answer decides its own request only, in its own context.
    p.answer(second, 200, &[], &active_json(mine));
    assert_eq!(p.status(second), 200);
    assert_eq!(p.fate(first), Fate::Paused);
    assert_eq!(p.fate(admin), Fate::Paused);
    p.answer(admin, 200, &[], &active_json(mine));
    assert_eq!(p.status(admin), 403);
    p.answer(first, 503, &[], b"");
    assert_eq!(p.status(first), 503);
    // A request going away leaves the others' calls alone.
    let gone = in_nginx(&mut p, "tok-2", "4", "SUCCESS");
    let kept = in_nginx(&mut p, "tok-2", "5", "SUCCESS");
    p.gone(gone);
    p.answer(kept, 200, &[], &active_json(mine));
    assert_eq!(p.status(kept), 200);
}

#[test]
fn in_nginx_each_check_that_needs_the_key_set_fetches_it_itself() {
    let mine = Thumbprint::from_pem(std::str::from_utf8(NGINX_PEM).unwrap()).unwrap();
    let mut p = Proxy::new_in(true, &config("jwt"), NOW);
    let jwks = jwks_json(&[ps256()]);
    let a = in_nginx(&mut p, "tok-a", "1", "SUCCESS");
    let b = in_nginx(&mut p, "tok-b", "2", "SUCCESS");
    p.answer(a, 200, &[], phantom(mine).as_bytes());
    p.answer(b, 200, &[], phantom(mine).as_bytes());
    let key_set_callers: Vec<u32> = p
        .calls()
        .iter()
        .filter(|(_, c)| c.kind == CallKind::KeySet)
        .map(|(from, _)| *from)
        .collect();
    assert_eq!(
        key_set_callers,
        vec![a, b],
        "no check waits for another's key set"
    );
    p.answer(b, 200, &[], jwks.as_bytes());
    assert_eq!(p.status(b), 200);
    assert_eq!(p.fate(a), Fate::Paused);
    p.answer(a, 200, &[], jwks.as_bytes());
    assert_eq!(p.status(a), 200);
}

#[test]
fn in_nginx_routes_read_the_path_as_the_client_sent_it() {
    let mine = Thumbprint::from_pem(std::str::from_utf8(NGINX_PEM).unwrap()).unwrap();
    let mut p = Proxy::new_in(true, &config("json"), NOW);
    // `:path` is NGINX's decoded, normalized URI; proxy_pass forwards what the client sent.
    for sent in [
        "/api//transactions",
        "/api/%74ransactions",
        "//api/transactions",
    ] {
        let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", sent, &[]);
        assert_eq!(p.status(r), 400, "{sent}");
        assert_eq!(error_of(&p, r), "invalid_request");
    }
    // The query as sent too: a token there is refused.
    let sent = format!("{PATH}?access_token=tok");
    let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", &sent, &[]);
    assert_eq!(p.status(r), 400);
    assert!(p.calls().is_empty(), "nothing was introspected");
    let r = in_nginx(&mut p, "tok", "1", "SUCCESS");
    p.answer(r, 200, &[], &active_json(mine));
    assert_eq!(p.status(r), 200);
    // Without the sent path the request cannot be checked: refused.
    let props: [(&str, &[u8]); 3] = [
        ("id", b"2"),
        ("ngx.ssl_client_verify", b"SUCCESS"),
        ("ngx.ssl_client_raw_cert", NGINX_PEM),
    ];
    let r = on_connection(&mut p, "tok", &[], &props);
    assert_eq!(p.status(r), 503);
}

#[test]
fn in_nginx_a_header_certbound_would_remove_or_overwrite_is_refused() {
    let mine = Thumbprint::from_pem(std::str::from_utf8(NGINX_PEM).unwrap()).unwrap();
    let mut p = Proxy::new_in(true, &config("json"), NOW);
    // (NGINX forwards a header a filter removes: ngx_wasm_module only marks it.)
    for extra in [
        ("x-client-id", "admin"),
        ("X-Client-Id", "admin"),
        ("x_client_id", "admin"),
        ("client-cert", ":MIIBAA==:"),
        ("X-Forwarded-Client-Cert", "Hash=00"),
    ] {
        let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", PATH, &[extra]);
        assert_eq!(p.status(r), 400, "{extra:?}");
        assert_eq!(error_of(&p, r), "invalid_request");
    }
    assert!(p.calls().is_empty(), "refused before any call");
    let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", PATH, &[("x-note", "fine")]);
    p.answer(r, 200, &[], &active_json(mine));
    assert_eq!(p.status(r), 200);
    // In Envoy the same headers are removed or overwritten, and the request goes on.
    let mut e = Proxy::new(&config("json"), NOW);
    let headers = [
        (":method", "GET"),
        (":path", PATH),
        ("authorization", "Bearer tok"),
        ("x-client-id", "admin"),
        ("client-cert", ":MIIBAA==:"),
    ];
    let r = e.request(&headers, Some(MINE));
    e.answer(r, 200, &[], &active_json(MINE));
    assert_eq!(e.status(r), 200);
    assert_eq!(e.upstream_header(r, "client-cert"), None);
    assert_eq!(
        e.upstream_header(r, "x-client-id"),
        Some("partner-client".to_string())
    );
}

#[test]
fn in_nginx_a_fragment_or_a_second_certificate_header_is_refused() {
    let mut v = config("json");
    v["client_certificate"] = json!({
        "sources": ["connection", "xfcc"],
        "trusted_hop": {"cidrs": ["10.0.0.0/8"]},
        "forward_xfcc_hash": true
    });
    let mut p = Proxy::new_in(true, &v, NOW);
    let sent = format!("{PATH}#x?access_token=tok");
    let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", &sent, &[]);
    assert_eq!(p.status(r), 400);
    let xfcc = ("x-forwarded-client-cert", "Hash=00");
    let r = in_nginx_with(&mut p, "tok", "1", "SUCCESS", PATH, &[xfcc, xfcc]);
    assert_eq!(
        p.status(r),
        400,
        "two copies: only the first would be overwritten"
    );
    assert!(p.calls().is_empty());
}

#[test]
fn a_proxy_taken_for_envoy_that_has_nginx_variables_refuses_every_request() {
    let mut p = Proxy::new(&config("json"), NOW);
    let props: [(&str, &[u8]); 2] = [
        (
            "sha256_peer_certificate_digest",
            b"0101010101010101010101010101010101010101010101010101010101010101",
        ),
        ("ngx.request_uri", PATH.as_bytes()),
    ];
    let r = on_connection(&mut p, "tok", &[], &props);
    assert_eq!(p.status(r), 503);
    let r = p.get(PATH, "tok", Some(MINE));
    assert_eq!(p.status(r), 503, "every request after it too");
    assert!(p.calls().is_empty());
    let logs = format!("{:?}", p.host.0.borrow().logs);
    assert!(
        logs.contains("taken for Envoy but has NGINX's variables"),
        "{logs}"
    );
    // In Envoy (no such variable) the first request is checked once and goes on.
    let mut e = Proxy::new(&config("json"), NOW);
    let a = e.get(PATH, "tok", Some(MINE));
    e.answer(a, 200, &[], &active_json(MINE));
    let b = e.get(PATH, "tok", Some(MINE));
    assert_eq!((e.status(a), e.status(b)), (200, 200));
    assert_eq!(reads_of(&e, "ngx.request_uri"), 1, "once per VM");
}

#[test]
fn in_nginx_allow_lists_and_trusted_hops_read_the_connections_own_certificate() {
    use crate::certificate::tests::partner;
    let der = partner();
    let cert = Thumbprint::from_der(&der);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
    );
    let mut v = config("json");
    v["routes"] = json!([
        {"path_prefix": "/api/transactions", "allowed_certificates": {"dns_sans": ["partner.example.com"]}},
        {"path_prefix": "/api/other", "allowed_certificates": {"issuers": ["CN=Other CA"]}}
    ]);
    let mut p = Proxy::new_in(true, &v, NOW);
    let request = |p: &mut Proxy, path: &str, id: &str| {
        let props: [(&str, &[u8]); 4] = [
            ("id", id.as_bytes()),
            ("ngx.ssl_client_verify", b"SUCCESS"),
            ("ngx.ssl_client_raw_cert", pem.as_bytes()),
            ("ngx.request_uri", path.as_bytes()),
        ];
        let headers = [
            (":method", "GET"),
            (":path", path),
            ("authorization", "Bearer tok"),
        ];
        p.request_on(&headers, &props)
    };
    let r = request(&mut p, "/api/transactions", "1");
    p.answer(r, 200, &[], &active_json(cert));
    assert_eq!(p.status(r), 200, "its DNS SAN is on the list");
    let r = request(&mut p, "/api/other", "2");
    assert_eq!(p.status(r), 403);
    assert_eq!(error_of(&p, r), "access_denied");
    // Parsed once per certificate: a new connection with it reads no PEM for the names.
    let pem_reads = reads_of(&p, "ngx.ssl_client_raw_cert");
    let r = request(&mut p, "/api/transactions", "3");
    assert_eq!(p.status(r), 200);
    assert_eq!(
        reads_of(&p, "ngx.ssl_client_raw_cert"),
        pem_reads + 1,
        "the thumbprint only"
    );
    assert_eq!(
        reads_of(&p, "connection.uri_san_peer_certificate"),
        0,
        "NGINX has none"
    );
}
