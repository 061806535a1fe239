//! The rule for names an operator or a tenant chooses: matchers and tenants.
//!
//! Names end up in URLs, file names under `--data-dir`, Redis keys and
//! metric labels, so they are kept to a small alphabet that is safe in all
//! of them.

/// Longest name.
pub const MAX_NAME_LEN: usize = 64;

/// The rule, for messages.
pub const NAME_RULE: &str = "1 to 64 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit";

/// Whether `name` follows the rule: 1 to 64 of `a-z 0-9 - _ .`, starting
/// with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["skills", "my-matcher", "v2.1", "a_b", "0day"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "Skills", "-x", ".x", "a/b", "a@b", "a:b", "x".repeat(65).as_str(), "ünï"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
