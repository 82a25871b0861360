//! `jwt::verify` on JWTs built from a header and claims that are JSON objects (names certbound
//! reads, times around now), signed with a key of the set or given any signature, so that the
//! claim checks behind the signature are reached.
#![no_main]
use arbitrary::Arbitrary;
use certbound_fuzz::Json;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    header: Json,
    claims: Json,
    /// 0-5: Ed25519 `o1` (the fastest to sign and check), 6: ES256 `e1`, 7: the bytes of
    /// `signature`.
    signer: u8,
    signature: Vec<u8>,
    /// Raw bytes in place of the header or claims JSON.
    raw_header: Option<Vec<u8>>,
    raw_claims: Option<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let keys = certbound_fuzz::keys();
    let header = input
        .raw_header
        .unwrap_or_else(|| input.header.0.to_string().into_bytes());
    let claims = input
        .raw_claims
        .unwrap_or_else(|| input.claims.0.to_string().into_bytes());
    let signed = input.signer % 8 < 7;
    let token = match input.signer % 8 {
        0..=5 => keys.ed25519.sign(&header, &claims),
        6 => keys.es256.sign(&header, &claims),
        _ => format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(&input.signature)
        ),
    };
    let rules = certbound_fuzz::rules();
    if let Ok(verified) =
        certbound::jwt::verify(&token, &keys.set, &rules, certbound_fuzz::NOW, 65536)
    {
        // Accepted means: signed by a key of the set, for this issuer and audience.
        assert!(signed, "accepted with a made-up signature");
        assert_eq!(
            verified.get("iss").and_then(|v| v.as_str()),
            Some(rules.issuer.as_str())
        );
    }
});
