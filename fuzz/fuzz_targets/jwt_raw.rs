//! `jwt::verify` on any string, with every algorithm allowed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let keys = certbound_fuzz::keys();
    let _ = certbound::jwt::verify(
        &token,
        &keys.set,
        &certbound_fuzz::rules(),
        certbound_fuzz::NOW,
        65536,
    );
});
