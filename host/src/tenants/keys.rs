//! API keys: made here, stored only as hashes, compared in constant time.
//!
//! A key is 32 random bytes from the operating system, written as
//! `mbx_` and 64 hex digits. The configuration file keeps its SHA-256 only.
//! A fast hash is enough, and a slow one (argon2, bcrypt) would be wrong
//! here: those protect *guessable* passwords, while a 256-bit random key
//! cannot be found from its hash by any amount of guessing, and a slow hash
//! would cost every request milliseconds of CPU.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "mbx_";

/// The SHA-256 of a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses the 64 hex digits the configuration file holds.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("key_sha256 must be 64 hex digits (the SHA-256 of the key)".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
        }
        Ok(KeyHash(out))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Compares in time that does not depend on where the hashes differ.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A fresh random key, to be shown once and never stored.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let mut key = String::with_capacity(PREFIX.len() + 64);
    key.push_str(PREFIX);
    for byte in bytes {
        key.push_str(&format!("{byte:02x}"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_hash_round_trips() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("mbx_") && a.len() == 68, "{a}");
        let hash = KeyHash::of(&a);
        assert!(KeyHash::from_hex(&hash.to_hex()).unwrap().matches(&hash));
        assert!(!KeyHash::of(&b).matches(&hash));
        assert!(KeyHash::from_hex("abc").is_err());
        assert!(KeyHash::from_hex(&"g".repeat(64)).is_err());
    }
}
