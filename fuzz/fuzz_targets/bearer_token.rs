//! The `Authorization` values of a request (each line one header), the query and a form body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    if let Ok(token) = certbound::token::bearer_token(&values, 4096) {
        // What is accepted is a b64token (RFC 6750 section 2.1) within the limit.
        assert!(!token.is_empty() && token.len() <= 4096);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
    }
    let _ = certbound::token::in_query(&text);
    let _ = certbound::token::in_form(data);
    let _ = certbound::token::is_form(&text);
});
