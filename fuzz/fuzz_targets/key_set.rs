//! A key set document as the identity server serves it. (Each key kept was made into a
//! verification key while parsing; jwt_structured verifies with such keys.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = certbound::jwks::KeySet::parse(data) {
        assert!(!set.keys.is_empty());
        for line in &set.skipped {
            // A skipped key is named on one log line, whatever its kid.
            assert!(!line.contains(['\n', '\r']));
        }
    }
});
