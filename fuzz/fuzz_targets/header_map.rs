//! The host's serialized header map, as `proxy_get_header_map_pairs` hands it over.
#![no_main]
use certbound::headers::Headers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let headers = Headers::from_serialized(data.to_vec());
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = headers
        .pairs()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    for name in [":path", ":method", "authorization", "content-type"] {
        let _ = headers.get(name);
        let _ = headers.values(name).count();
    }
    // What was read serializes back to a map that reads the same.
    let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let again = Headers::from_serialized(Headers::serialize(&refs));
    assert!(again.pairs().eq(refs.iter().copied()));
});
