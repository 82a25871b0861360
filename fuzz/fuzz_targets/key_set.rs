//! A key set document as the identity server serves it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = certbound::jwks::KeySet::parse(data) {
        assert!(!set.keys.is_empty());
        // Every key kept verifies (or refuses) a JWT without trouble.
        let token =
            certbound_jose::testing::sign(serde_json::json!({}), certbound_fuzz::NOW + 60, None);
        let _ = certbound::jwt::verify(
            &token,
            &set,
            &certbound_fuzz::rules(),
            certbound_fuzz::NOW,
            65536,
        );
    }
});
