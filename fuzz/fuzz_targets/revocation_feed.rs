//! The revocation feed's answer (the cursor, the SETs, each verified) and an event's claims, as
//! the identity server sends them (first byte: which of the two).
#![no_main]
use certbound::config::{Endpoint, Revocation};
use certbound::revocation::{self, Refetch, Target};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::rc::Rc;

fn section() -> Revocation {
    let mut rules = certbound_fuzz::rules();
    rules.typ = Some("secevent+jwt".into());
    Revocation {
        feed: Endpoint {
            cluster: "idsvr".into(),
            authority: "login.example.com".into(),
            path: "/events".into(),
            scheme: None,
        },
        rules: Rc::new(rules),
        poll_interval_ms: 500,
        timeout_ms: 1000,
        max_body_bytes: 65536,
        max_staleness_ms: 10_000,
        max_events: 100,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok((sets, next)) = revocation::parse_feed(body) {
            // The cursor goes into the next poll's path.
            assert!(next.len() <= 256);
            assert!(next
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)));
            let keys = &certbound_fuzz::keys().set;
            let v = revocation::verify_sets(
                &sets,
                keys,
                &section(),
                certbound_fuzz::NOW,
                Refetch::JustDone,
            );
            assert!(v.events.len() + v.rejected.len() <= sets.len());
        }
    } else if let Ok(Value::Object(claims)) = serde_json::from_slice(body) {
        if let Ok(event) = revocation::event_from_claims(&claims) {
            if let Target::Client { client_id, .. } = &event.target {
                assert!(!client_id.is_empty() && client_id.len() <= 256);
            }
        }
    }
});
