//! The revocation feed driven natively through the fake host: the poll, its lease, verification,
//! what every worker does with the events, and the staleness bound.

use super::*;
use crate::binding::Thumbprint;
use crate::config::minimal_config;
use crate::fake_host::{Fate, Proxy};
use crate::feed::PAGE;
use crate::flow::{Call, CallKind};
use certbound_jose::testing::{jwks_json, other_ps256, ps256, sign, sign_with, ISSUER, NOW};
use serde_json::{json, Value};

const MINE: Thumbprint = Thumbprint([1; 32]);
const PATH: &str = "/api/transactions";

/// Format json, whose events are verified with the section's own key set.
fn config() -> Value {
    let mut v = minimal_config("json");
    v["revocation"] = json!({
        "path": "/events", "issuer": ISSUER, "audience": "api.example.com",
        "jwks": {"cluster": "idsvr", "authority": "login.example.com", "path": "/jwks"},
        "poll_interval_ms": 500, "max_staleness_seconds": 5
    });
    v
}

fn members(client: &str, iat: u64) -> Vec<u8> {
    json!({"active": true, "scope": "transactions", "client_id": client, "iat": iat,
           "exp": NOW + 300, "cnf": {"x5t#S256": MINE.to_x5t()}})
    .to_string()
    .into_bytes()
}

fn set(event: Value) -> String {
    sign(json!({ "events": event }), 0, Some("secevent+jwt"))
}

fn revoked(token: &str) -> Value {
    let hash = URL_SAFE_NO_PAD.encode(token_hash(token));
    json!({ TOKEN_REVOKED: {"token_hash": hash, "client_id": "partner-client", "retain_until": NOW + 300} })
}

fn offboarded(client: &str, issued_before: u64) -> Value {
    json!({ CLIENT_OFFBOARDED: {"client_id": client, "issued_before": issued_before, "retain_until": NOW + 400} })
}

fn feed(sets: &[String], next: &str) -> Vec<u8> {
    json!({"events": sets, "next": next})
        .to_string()
        .into_bytes()
}

/// A worker whose feed has answered (empty), and the identity server's answer for an active
/// token of partner-client.
fn started() -> (Proxy, Vec<u8>) {
    let mut p = Proxy::new(&config(), NOW);
    start(&mut p, &[]);
    (p, members("partner-client", NOW - 5))
}

/// The root context's last call.
fn last_root_call(p: &Proxy) -> Call {
    p.root_calls().pop().expect("the root context sent a call")
}

/// The first poll: the key set (none is known yet), then the feed, answered with `sets`.
fn start(p: &mut Proxy, sets: &[String]) {
    p.tick();
    assert_eq!(last_root_call(p).kind, CallKind::KeySet);
    p.answer_root(200, jwks_json(&[ps256()]).as_bytes());
    p.tick();
    let call = last_root_call(p);
    assert_eq!(call.kind, CallKind::RevocationFeed);
    assert_eq!(call.headers[1], (":path", "/events?limit=50".to_string()));
    p.answer_root(200, &feed(sets, "b.1"));
}

/// The next poll (after the interval), answered with `sets`; returns the path it asked for.
fn poll(p: &mut Proxy, sets: &[String], next: &str) -> String {
    let before = p.root_calls().len();
    p.advance_ms(500);
    assert_eq!(p.root_calls().len(), before + 1, "the poll is due");
    let call = last_root_call(p);
    assert_eq!(call.kind, CallKind::RevocationFeed);
    p.answer_root(200, &feed(sets, next));
    call.headers[1].1.clone()
}

/// A request with `token`, answered by the identity server with `answer` if it asks.
fn request(p: &mut Proxy, token: &str, answer: &[u8]) -> u32 {
    let r = p.get(PATH, token, Some(MINE));
    if p.fate(r) == Fate::Paused {
        p.answer(r, 200, &[], answer);
    }
    r
}

/// `request`'s status.
fn status(p: &mut Proxy, token: &str, answer: &[u8]) -> u32 {
    let r = request(p, token, answer);
    p.status(r)
}

fn introspections(p: &Proxy) -> usize {
    p.calls()
        .iter()
        .filter(|(_, c)| c.kind == CallKind::Introspection)
        .count()
}

#[test]
fn a_revoked_token_is_refused_from_the_next_tick_and_another_is_not() {
    let mut p = Proxy::new(&config(), NOW);
    // Before the feed has answered, nothing cached decides: each request is introspected.
    let active = members("partner-client", NOW - 5);
    assert_eq!(status(&mut p, "tok-1", &active), 200);
    assert_eq!(status(&mut p, "tok-1", &active), 200);
    assert_eq!(introspections(&p), 2);

    start(&mut p, &[]);
    assert_eq!(status(&mut p, "tok-2", &active), 200);
    for token in ["tok-1", "tok-2"] {
        assert_eq!(status(&mut p, token, &active), 200);
    }
    assert_eq!(introspections(&p), 3, "hits, once the feed answered");

    let path = poll(&mut p, &[set(revoked("tok-1"))], "b.2");
    assert_eq!(
        path, "/events?after=b.1&limit=50",
        "the cursor of the last answer"
    );
    let r = p.get(PATH, "tok-1", Some(MINE));
    assert_eq!(p.status(r), 401, "refused at once, without a call");
    assert_eq!(status(&mut p, "tok-2", &active), 200);
    assert_eq!(introspections(&p), 3);
    assert_eq!(p.counter("revocations_applied"), 1);
    assert_eq!(p.counter("revocation_entries_dropped"), 1);
    assert_eq!(p.counter("requests_denied.inactive_token"), 1);
    assert_eq!(p.gauge("revocation_feed_lag_ms"), Some(0));

    // An answer that crossed the event (given before the revocation) is refused too.
    let r = p.get(PATH, "tok-3", Some(MINE));
    poll(&mut p, &[set(revoked("tok-3"))], "b.3");
    p.answer(r, 200, &[], &active);
    assert_eq!(p.status(r), 401);
}

#[test]
fn every_worker_drops_what_one_worker_recorded_and_only_one_polls() {
    let mut p = Proxy::new(&config(), NOW);
    let mut q = p.beside();
    let active = members("partner-client", NOW - 5);
    start(&mut p, &[]);
    q.tick();
    assert!(
        q.root_calls().is_empty(),
        "the poll is p's until it is due again"
    );
    for w in [&mut p, &mut q] {
        assert_eq!(status(w, "tok-1", &active), 200);
        assert_eq!(status(w, "tok-1", &active), 200);
    }
    assert_eq!(introspections(&q), 0, "q read p's entry from shared data");

    // q takes its turn: it polls; while its call is out, p does not poll.
    q.advance_ms(500);
    assert_eq!(last_root_call(&q).kind, CallKind::RevocationFeed);
    let p_calls = p.root_calls().len();
    p.advance_ms(500);
    assert_eq!(p.root_calls().len(), p_calls, "q holds the poll");
    q.answer_root(200, &feed(&[set(revoked("tok-1"))], "b.2"));
    assert_eq!(status(&mut p, "tok-1", &active), 200, "before p's tick");
    p.tick();
    let r = p.get(PATH, "tok-1", Some(MINE));
    assert_eq!(p.status(r), 401, "after p's tick");
    let r = q.get(PATH, "tok-1", Some(MINE));
    assert_eq!(q.status(r), 401);
    assert_eq!(
        p.counter("revocations_applied") + q.counter("revocations_applied"),
        1
    );
    assert_eq!(q.counter("revocation_polls"), 1);
}

#[test]
fn an_offboarded_client_loses_the_tokens_issued_before_the_event() {
    let mut p = Proxy::new(&config(), NOW);
    start(&mut p, &[]);
    let old = members("partner-client", NOW - 5);
    let newer = members("partner-client", NOW + 10);
    let other = members("partner-client-2", NOW - 5);
    let no_iat = json!({"active": true, "scope": "transactions", "client_id": "partner-client",
                        "exp": NOW + 300, "cnf": {"x5t#S256": MINE.to_x5t()}})
    .to_string()
    .into_bytes();
    for (token, answer) in [
        ("old", &old),
        ("new", &newer),
        ("other", &other),
        ("no-iat", &no_iat),
    ] {
        assert_eq!(status(&mut p, token, answer), 200);
    }
    poll(&mut p, &[set(offboarded("partner-client", NOW + 1))], "b.2");
    for (token, status) in [("old", 401), ("new", 200), ("other", 200), ("no-iat", 401)] {
        let r = p.get(PATH, token, Some(MINE));
        assert_eq!(p.status(r), status, "{token}");
    }
    assert_eq!(p.counter("revocation_entries_dropped"), 2);
}

#[test]
fn forged_unsigned_and_unknown_events_are_ignored() {
    let (mut p, active) = started();
    assert_eq!(status(&mut p, "tok", &active), 200);
    let claims = json!({"events": revoked("tok"), "iss": ISSUER, "aud": "api.example.com"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"secevent+jwt"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // A signed SET with its payload swapped for one naming another audience: a bad signature.
    let signed = set(revoked("tok"));
    let parts: Vec<&str> = signed.split('.').collect();
    let mut other_claims = claims.clone();
    other_claims["aud"] = json!("someone-else");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(other_claims.to_string()),
        parts[2]
    );
    let sets = [
        // Signed by a key the identity server's key set does not have (kid k2): after a refetch
        // that still lacks it, refused.
        sign_with(
            other_ps256(),
            json!({"events": revoked("tok")}),
            0,
            Some("secevent+jwt"),
        ),
        unsigned,
        tampered,
        // Signed, but typed as an access token, not a SET.
        sign(json!({"events": revoked("tok")}), 0, Some("at+jwt")),
        // Signed, an unknown event type.
        set(json!({"https://example.com/other": {"retain_until": NOW + 300}})),
        // Signed, two events in one SET.
        set(
            json!({ TOKEN_REVOKED: {"token_hash": "A".repeat(32), "retain_until": NOW + 300},
                    CLIENT_OFFBOARDED: {"client_id": "partner-client", "issued_before": NOW + 1, "retain_until": NOW + 300} }),
        ),
    ];
    // Within the key set's refetch interval an unknown kid is not refused: the poll is made
    // again later, the cursor stays.
    p.advance_ms(500);
    p.answer_root(200, &feed(&sets, "b.2"));
    assert_eq!(p.counter("revocation_poll_failures"), 1);
    assert_eq!(p.counter("revocation_events_rejected"), 0);
    // Past it, the unknown kid makes the key set be fetched again (it may have rotated)...
    p.advance(31);
    assert_eq!(
        last_root_call(&p).headers[1].1,
        "/events?after=b.1&limit=50"
    );
    p.answer_root(200, &feed(&sets, "b.2"));
    p.tick();
    assert_eq!(last_root_call(&p).kind, CallKind::KeySet);
    p.answer_root(200, jwks_json(&[ps256()]).as_bytes());
    // ... then the poll is made again, and the events are refused.
    p.tick();
    assert_eq!(last_root_call(&p).kind, CallKind::RevocationFeed);
    assert_eq!(
        last_root_call(&p).headers[1].1,
        "/events?after=b.1&limit=50"
    );
    p.answer_root(200, &feed(&sets, "b.2"));
    assert_eq!(p.counter("revocation_events_rejected"), sets.len() as u64);
    assert_eq!(p.counter("revocations_applied"), 0);
    let r = request(&mut p, "tok", &active);
    assert_eq!(p.status(r), 200, "the token still works");
    let logs = p.host.0.borrow().logs.clone();
    assert!(
        logs.iter()
            .any(|(_, l)| l.contains("revocation event refused: the JWT signature is invalid")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|(_, l)| l.contains(&sets[1])),
        "no SET is logged"
    );
}

#[test]
fn without_the_feed_for_the_staleness_bound_cached_entries_are_introspected_again() {
    let (mut p, active) = started();
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 1);
    // The feed fails on every poll from now on; within 5 s the cache still decides.
    for _ in 0..9 {
        p.advance_ms(500);
        p.fail_root_call();
    }
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 1, "4.5 s: still trusted");
    assert_eq!(p.gauge("revocation_feed_lag_ms"), Some(4500));
    p.advance_ms(600);
    p.fail_root_call();
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 2, "5.1 s: introspected again");
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 3);
    assert_eq!(p.counter("revocation_poll_failures"), 10);
    // The feed answers again: the cache decides again.
    poll(&mut p, &[], "b.2");
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 3);
}

#[test]
fn a_revoked_token_is_never_served_stale() {
    let mut v = config();
    v["cache"] = json!({"stale_if_error_seconds": 60});
    let mut p = Proxy::new(&v, NOW);
    start(&mut p, &[]);
    let active = members("partner-client", NOW - 5);
    for token in ["kept", "revoked"] {
        let r = p.get(PATH, token, Some(MINE));
        p.answer(r, 200, &[("cache-control", "max-age=2")], &active);
        assert_eq!(p.status(r), 200);
    }
    poll(&mut p, &[set(revoked("revoked"))], "b.2");
    // The entries expire; the identity server is down.
    for _ in 0..6 {
        poll(&mut p, &[], "b.2");
    }
    for (token, status) in [("kept", 200), ("revoked", 401)] {
        let r = p.get(PATH, token, Some(MINE));
        if p.fate(r) == Fate::Paused {
            p.fail_call(r);
        }
        assert_eq!(p.status(r), status, "{token}");
    }
    assert_eq!(p.counter("stale_answers"), 1);
}

#[test]
fn a_full_log_forgets_its_oldest_events_and_distrusts_what_was_cached_before() {
    let mut v = config();
    v["revocation"]["max_events"] = json!(1);
    let mut p = Proxy::new(&v, NOW);
    start(&mut p, &[]);
    let active = members("partner-client", NOW - 5);
    assert_eq!(status(&mut p, "cached", &active), 200);
    poll(&mut p, &[set(revoked("a")), set(revoked("b"))], "b.3");
    let cfg = crate::config::parse(v.to_string().as_bytes()).unwrap();
    let seal = Seal::new(&cfg.fingerprint, &cfg.introspection.client_secret);
    let shared = RevocationStore {
        namespace: "certbound",
        seal: &seal,
    };
    let feed = shared.feed(&p.host).0.unwrap();
    assert_eq!((feed.seq, feed.revoked_before), (2, NOW));
    let log = shared.log(&p.host, feed.epoch).unwrap().0;
    assert_eq!(log.events.len(), 1);
    // Checked before the overflow: not refused, introspected again.
    let r = p.get(PATH, "cached", Some(MINE));
    assert_eq!(p.fate(r), Fate::Paused);
    p.answer(r, 200, &[], &active);
    assert_eq!(p.status(r), 200);
}

#[test]
fn events_and_feed_answers_are_read_strictly() {
    let hash = URL_SAFE_NO_PAD.encode([7u8; 24]);
    let claims = |event: Value| -> Map<String, Value> {
        json!({ "events": event }).as_object().unwrap().clone()
    };
    assert_eq!(
        event_from_claims(&claims(
            json!({TOKEN_REVOKED: {"token_hash": hash, "retain_until": 5}})
        )),
        Ok(Event {
            target: Target::Token([7; 24]),
            retain_until: 5
        })
    );
    for bad in [
        json!({}),
        json!({TOKEN_REVOKED: {"token_hash": hash}}),
        json!({TOKEN_REVOKED: {"token_hash": "short", "retain_until": 5}}),
        json!({TOKEN_REVOKED: {"token_hash": format!("{hash}AAAA"), "retain_until": 5}}),
        json!({CLIENT_OFFBOARDED: {"client_id": "", "issued_before": 1, "retain_until": 5}}),
        json!({CLIENT_OFFBOARDED: {"client_id": "c", "retain_until": 5}}),
        json!({"urn:other": {"retain_until": 5}}),
        json!({TOKEN_REVOKED: "x"}),
    ] {
        assert!(event_from_claims(&claims(bad.clone())).is_err(), "{bad}");
    }
    assert!(parse_feed(br#"{"events": [], "next": "b.1"}"#).is_ok());
    for bad in [
        &br#"{"events": [], "next": "b 1"}"#[..],
        br#"{"events": [], "next": "b.1&x=y"}"#,
        br#"{"events": [], "next": ""}"#,
        br#"{"events": [1], "next": "b.1"}"#,
        br#"{"next": "b.1"}"#,
        b"not json",
    ] {
        assert!(parse_feed(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    // The hash the identity server names tokens by: base64url(SHA-256(token))[..32].
    let full = URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok"));
    assert_eq!(URL_SAFE_NO_PAD.encode(token_hash("tok")), full[..32]);
}

#[test]
fn a_state_that_starts_over_is_applied_whole_by_every_worker() {
    let mut p = Proxy::new(&config(), NOW);
    let mut q = p.beside();
    let active = members("partner-client", NOW - 5);
    start(&mut p, &[set(revoked("e1")), set(revoked("e2"))]);
    for token in ["e3", "e4"] {
        assert_eq!(status(&mut p, token, &active), 200);
    }
    // The feed's state is replaced by a value this configuration did not seal: nothing is
    // trusted, and the next poll (q's) starts over from the feed's beginning, in a new epoch,
    // where the identity server has pruned e1 and e2: e3 and e4 are numbered 1 and 2, as e1 and
    // e2 were in p's epoch. p must still apply them.
    let key = "certbound/revocation/feed".to_string();
    p.host
        .0
        .borrow_mut()
        .shared
        .insert(key, (b"forged".to_vec(), 99));
    q.tick();
    p.tick();
    let r = p.get(PATH, "e3", Some(MINE));
    assert_eq!(
        p.fate(r),
        Fate::Paused,
        "an unreadable feed state: not trusted"
    );
    p.answer(r, 200, &[], &active);
    let call = last_root_call(&q);
    assert_eq!(call.headers[1].1, "/events?limit=50", "from the beginning");
    q.answer_root(200, &feed(&[set(revoked("e3")), set(revoked("e4"))], "c.2"));
    p.tick();
    for token in ["e3", "e4"] {
        let r = p.get(PATH, token, Some(MINE));
        assert_eq!(p.status(r), 401, "{token}");
    }
}

#[test]
fn a_full_page_is_followed_at_once_and_a_clock_that_went_back_is_not_trusted() {
    let (mut p, active) = started();
    let page: Vec<String> = (0..PAGE).map(|i| set(revoked(&format!("t{i}")))).collect();
    poll(&mut p, &page, "b.51");
    p.tick();
    let call = last_root_call(&p);
    assert_eq!(
        call.headers[1].1, "/events?after=b.51&limit=50",
        "the next page at once"
    );
    p.answer_root(200, &feed(&[], "b.51"));
    assert_eq!(p.counter("revocations_applied"), PAGE as u64);
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 1);
    // The clock goes back an hour: the feed's last answer is in the future, so the cache is
    // not trusted; the lease (an hour ahead now) counts as expired and the poll goes out.
    p.host.0.borrow_mut().now -= 3600;
    let before = p.root_calls().len();
    p.tick();
    assert_eq!(
        p.root_calls().len(),
        before + 1,
        "polled despite the due time ahead"
    );
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(
        introspections(&p),
        2,
        "not trusted until the feed answers again"
    );
    p.answer_root(200, &feed(&[], "b.51"));
    assert_eq!(status(&mut p, "tok", &active), 200);
    assert_eq!(introspections(&p), 2);
}
