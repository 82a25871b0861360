//! The request headers as the host serializes them, read in place without copying or panicking.

use std::borrow::Cow;

/// Header pairs in the host's serialization: a count, then (name length, value length) for each
/// pair as little-endian u32, then each name and value followed by a NUL byte. Names are lower
/// case in Envoy, as the client sent them in NGINX.
pub struct Headers(Vec<u8>);

impl Headers {
    /// The host's serialization of `pairs` (what a host hands `from_serialized`).
    pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            b.extend((k.len() as u32).to_le_bytes());
            b.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            b.extend(*k);
            b.push(0);
            b.extend(*v);
            b.push(0);
        }
        b
    }

    pub fn from_serialized(buffer: Vec<u8>) -> Headers {
        Headers(buffer)
    }

    /// Every pair, in order. A truncated buffer ends the pairs early.
    #[inline]
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let b = self.0.as_slice();
        let u32_at = |i: usize| -> Option<usize> {
            let bytes = b.get(i..i.checked_add(4)?)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
        };
        let count = u32_at(0).unwrap_or(0);
        let mut n = 0;
        let mut p = count.saturating_mul(8).saturating_add(4);
        std::iter::from_fn(move || {
            if n >= count {
                return None;
            }
            let name_len = u32_at(4 + 8 * n)?;
            let value_len = u32_at(8 + 8 * n)?;
            let name = b.get(p..p.checked_add(name_len)?)?;
            p = p.checked_add(name_len)?.checked_add(1)?;
            let value = b.get(p..p.checked_add(value_len)?)?;
            p = p.checked_add(value_len)?.checked_add(1)?;
            n += 1;
            Some((name, value))
        })
    }

    /// Every value of header `name`, in any letter case (Envoy hands names over in lower case,
    /// NGINX as the client sent them). A value that is not UTF-8 comes with U+FFFD in place of
    /// the bad bytes, which no token grammar accepts.
    #[inline]
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> {
        self.pairs()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// The first value of header `name`.
    pub fn get<'a>(&'a self, name: &'a str) -> Option<Cow<'a, str>> {
        self.values(name).next()
    }
}

#[cfg(test)]
mod tests {
    use super::Headers;

    #[test]
    fn headers_are_read_in_place_from_the_host_serialization() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":path", b"/api/x"),
            (b"authorization", b"Bearer one"),
            (b"x-note", b"caf\xe9"),
            (b"authorization", b""),
        ];
        let h = Headers::from_serialized(Headers::serialize(&pairs));
        assert_eq!(h.pairs().collect::<Vec<_>>(), pairs);
        assert_eq!(h.get(":path").as_deref(), Some("/api/x"));
        assert_eq!(
            h.values("authorization").collect::<Vec<_>>(),
            ["Bearer one", ""]
        );
        assert_eq!(h.get("x-note").as_deref(), Some("caf\u{fffd}"));
        assert_eq!(h.get("x-missing"), None);
        assert_eq!(Headers::from_serialized(Vec::new()).pairs().count(), 0);
    }

    #[test]
    fn a_truncated_or_lying_buffer_ends_the_pairs_without_panicking() {
        let full = Headers::serialize(&[(b"a", b"1"), (b"bb", b"22")]);
        for cut in 0..full.len() {
            let h = Headers::from_serialized(full[..cut].to_vec());
            assert!(h.pairs().count() <= 2, "cut at {cut}");
        }
        let mut huge_count = full.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_serialized(huge_count).pairs().count(), 0);
        let mut huge_len = full;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Headers::from_serialized(huge_len).pairs().count(), 0);
    }
}
