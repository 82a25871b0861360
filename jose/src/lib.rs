//! JOSE for certbound: JSON Web Key Sets (`jwks`) and JWS verification with claim checks (`jwt`),
//! on the RustCrypto crates. A crate of its own so that it is built at opt-level "z" (the root
//! Cargo.toml's profile): it runs on a cache miss only.

pub mod json;
pub mod jwks;
pub mod jwt;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
