//! An identity server's introspection answer: format, status and body, then (for a member
//! answer) the cache entry made of it.
#![no_main]
use certbound::cache::TokenKey;
use certbound::introspection::{self, Answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [format, hi, lo, body @ ..] = data else {
        return;
    };
    let cfg = certbound_fuzz::config(*format);
    let status = u16::from_be_bytes([*hi, *lo]) % 600;
    let answer = introspection::classify(&cfg.introspection.format, Some(status), body);
    if let Ok(Answer::Members(members)) = answer {
        let _ = introspection::entry_from_members(
            &members,
            TokenKey([7; 32]),
            certbound_fuzz::NOW,
            None,
            None,
            cfg,
        );
    }
});
