//! Signing as the Standard Webhooks specification describes it.
//!
//! A secret is `whsec_` and the base64 of its key bytes (24 to 64 of them;
//! [`Secret::generate`] makes 32). Each request carries `webhook-id` (the
//! same on every attempt of one message), `webhook-timestamp` (Unix
//! seconds, of the attempt) and `webhook-signature`: `v1,` and the base64
//! of the HMAC-SHA256, under the key, of `{id}.{timestamp}.{body}`. A
//! receiver recomputes it, compares in constant time, and refuses a
//! timestamp far from its clock (the README shows it in Python).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};

const PREFIX: &str = "whsec_";

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let rule = "a webhook signing secret is 'whsec_' and the base64 of 24 to 64 random bytes \
                    (`matchbox tenant add` makes one)";
        let encoded = raw.trim().strip_prefix(PREFIX).ok_or_else(|| format!("{rule}; this one lacks the prefix"))?;
        let key = STANDARD.decode(encoded).map_err(|e| format!("{rule}; this one is not base64: {e}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("{rule}; this one has {} bytes", key.len()));
        }
        Ok(Secret { key })
    }
}

impl Secret {
    /// A fresh random secret, 32 bytes.
    pub fn generate() -> std::io::Result<Self> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        Ok(Secret { key })
    }

    /// The secret as written in a tenants file or a variable.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The `webhook-signature` value for message `id`, sent at `timestamp`
    /// (Unix seconds), with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// libraries: this secret, id, timestamp and body sign to this value.
    #[test]
    fn signs_the_specifications_example() {
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_say_why() {
        let a = Secret::generate().unwrap();
        assert_ne!(a, Secret::generate().unwrap());
        assert_eq!(a.expose().parse::<Secret>().unwrap(), a);
        assert!(!format!("{a:?}").contains(&a.expose()[6..]), "Debug hides the key");
        assert!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<Secret>().unwrap_err().contains("prefix"));
        assert!("whsec_!!!".parse::<Secret>().unwrap_err().contains("base64"));
        assert!("whsec_c2hvcnQ=".parse::<Secret>().unwrap_err().contains("5 bytes"));
    }
}
