//! JSON objects as JOSE reads them (RFC 7515 section 4, RFC 7519 section 7.2, RFC 7662 section 2.2):
//! a JSON text that is an object, each member name once. serde's derived structs also accept a
//! sequence (`["ES256","k1"]` read as `alg`, `kid`) and `Map` keeps the last of repeated names, so
//! every header, claims set and introspection answer is read through `object` first.

use serde::de::{Deserialize, Deserializer, Error, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The members of `bytes` if it is one JSON object whose member names are all distinct (at its
/// top level; nested objects are read as serde_json reads them).
pub fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<Unique>(bytes).ok().map(|u| u.0)
}

struct Unique(Map<String, Value>);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with distinct member names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Unique, A::Error> {
        let mut members = Map::new();
        while let Some((name, value)) = access.next_entry::<String, Value>()? {
            if members.contains_key(&name) {
                return Err(A::Error::custom("a member name is repeated"));
            }
            members.insert(name, value);
        }
        Ok(Unique(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_with_distinct_names_are_objects() {
        assert_eq!(object(br#" {"a": 1, "b": {"a": 2}} "#).unwrap().len(), 2);
        assert!(object(br#"{}"#).unwrap().is_empty());
        for not in [
            &br#"["ES256","k1","JWT"]"#[..],
            br#"{"a": 1, "a": 2}"#,
            br#""text""#,
            br#"5"#,
            br#"null"#,
            br#"{"a": 1} x"#,
            br#"{"a": 1"#,
            b"",
        ] {
            assert!(object(not).is_none(), "{}", String::from_utf8_lossy(not));
        }
    }
}
