//! Reading the bearer token from `Authorization`, strictly as RFC 6750 section 2.1 writes it.

/// Why no token could be taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No `Authorization` header, or one of another scheme: answered with a bare challenge.
    Missing,
    /// The header is there but is not one valid bearer credential.
    Malformed(&'static str),
}

/// The bearer token of a request whose `Authorization` values are `values`
/// (every header of that name, in order).
#[inline]
pub fn bearer_token<S: AsRef<str>>(values: &[S], max_length: usize) -> Result<&str, TokenError> {
    let value = match values {
        [] => return Err(TokenError::Missing),
        [one] => one.as_ref(),
        _ => return Err(TokenError::Malformed("several Authorization headers")),
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(TokenError::Missing);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(TokenError::Malformed("the bearer token is empty"));
    }
    if token.len() > max_length {
        return Err(TokenError::Malformed("the bearer token is too long"));
    }
    if !is_b64token(token) {
        return Err(TokenError::Malformed("the bearer token is not a b64token"));
    }
    Ok(token)
}

/// Whether the request's `:path` carries an `access_token` query parameter (its name
/// percent-decoded). RFC 6750 section 2 allows one method per request, and certbound accepts the
/// header only: a token in the query is refused, never ignored.
pub fn in_query(path: &str) -> bool {
    let path = path.split('#').next().unwrap_or(path);
    let Some((_, query)) = path.split_once('?') else {
        return false;
    };
    has_access_token(query)
}

/// Whether an `application/x-www-form-urlencoded` body carries an `access_token` parameter
/// (RFC 6750 section 2.2): beside `Authorization`, a second token.
pub fn in_form(body: &[u8]) -> bool {
    has_access_token(&String::from_utf8_lossy(body))
}

/// Whether a `Content-Type` value is `application/x-www-form-urlencoded` (parameters aside).
pub fn is_form(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// `name=value&…` with a parameter whose percent-decoded name is `access_token`.
fn has_access_token(params: &str) -> bool {
    params.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or(pair);
        percent_decoded_eq(name, "access_token")
    })
}

/// `encoded`, percent-decoded (and `+` as a space), equals `plain`. Written out here because the
/// one comparison needs no decoding library.
fn percent_decoded_eq(encoded: &str, plain: &str) -> bool {
    let mut bytes = encoded.bytes();
    let mut expected = plain.bytes();
    loop {
        let decoded = match bytes.next() {
            None => return expected.next().is_none(),
            Some(b'%') => {
                let hex = |b: Option<u8>| (b? as char).to_digit(16);
                match (hex(bytes.next()), hex(bytes.next())) {
                    (Some(h), Some(l)) => (h * 16 + l) as u8,
                    _ => return false,
                }
            }
            Some(b'+') => b' ',
            Some(b) => b,
        };
        if expected.next() != Some(decoded) {
            return false;
        }
    }
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
#[inline]
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_token_in_a_form_body_is_found() {
        assert!(in_form(b"amount=1&access_token=abc"));
        assert!(in_form(b"access%5ftoken=abc"));
        assert!(!in_form(b"amount=1&note=access_token"));
        assert!(!in_form(b"\xff\xfe"));
        assert!(is_form("Application/X-WWW-Form-Urlencoded; charset=utf-8"));
        assert!(!is_form("application/json"));
        assert!(!is_form("multipart/form-data; boundary=x"));
    }

    #[test]
    fn an_access_token_in_the_query_is_found_however_it_is_spelled() {
        for path in [
            "/api?access_token=x",
            "/api?a=1&access_token=",
            "/api?access%5Ftoken=x",
            "/api?%61ccess_token=x",
            "/api?access_token",
        ] {
            assert!(in_query(path), "{path}");
        }
        for path in [
            "/api",
            "/api/access_token",
            "/api?access_tokens=x",
            "/api?x=access_token",
            "/api?access_token%=x",
            "/api#?access_token=x",
        ] {
            assert!(!in_query(path), "{path}");
        }
    }
    use TokenError::*;

    #[test]
    fn authorization_is_parsed_strictly() {
        let long = format!("Bearer {}", "a".repeat(21));
        let table: Vec<(Vec<&str>, Result<&str, TokenError>)> = vec![
            (vec!["Bearer abc.DEF-_~+/=="], Ok("abc.DEF-_~+/==")),
            (vec!["bearer abc"], Ok("abc")),
            (vec!["BEARER abc"], Ok("abc")),
            (vec!["Bearer   abc"], Ok("abc")),
            (vec![], Err(Missing)),
            (vec!["Basic dXNlcjpwYXNz"], Err(Missing)),
            (vec!["Bearerabc"], Err(Missing)),
            (vec!["Bearer"], Err(Malformed("the bearer token is empty"))),
            (vec!["Bearer "], Err(Malformed("the bearer token is empty"))),
            (
                vec!["Bearer a b"],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer a,b"],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer ==="],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer a=b"],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer \"abc\""],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer abc\t"],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec!["Bearer äbc"],
                Err(Malformed("the bearer token is not a b64token")),
            ),
            (
                vec![long.as_str()],
                Err(Malformed("the bearer token is too long")),
            ),
            (
                vec!["Bearer a", "Bearer a"],
                Err(Malformed("several Authorization headers")),
            ),
            (
                vec!["Bearer a", "Basic b"],
                Err(Malformed("several Authorization headers")),
            ),
        ];
        for (values, expected) in table {
            assert_eq!(bearer_token(&values, 20), expected, "{values:?}");
        }
    }

    #[test]
    fn a_token_of_exactly_the_maximum_length_is_accepted() {
        let token = "t".repeat(4096);
        let header = format!("Bearer {token}");
        assert_eq!(bearer_token(&[header.as_str()], 4096), Ok(token.as_str()));
    }
}
