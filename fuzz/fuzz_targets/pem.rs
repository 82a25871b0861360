//! Certificate forms a header or the host may carry: PEM, `x5t#S256`, the hex digest.
#![no_main]
use certbound::binding::Thumbprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Thumbprint::from_pem(&text);
    if let Some(t) = Thumbprint::from_x5t(&text) {
        assert_eq!(Thumbprint::from_x5t(&t.to_x5t()).map(|u| u.0), Some(t.0));
    }
    let _ = Thumbprint::from_hex_digest(&text);
});
