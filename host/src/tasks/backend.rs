//! Which task store a host runs, as `--store` names it.

use std::str::FromStr;

/// `memory`, or a Redis URL (`redis://host:6379/0`, `rediss://…` for TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded table of this process.
    Memory,
    /// A Redis server, shared by the hosts of one deployment.
    Redis { url: String },
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "memory" => Ok(Backend::Memory),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Backend::Redis { url: url.to_string() })
            }
            other => Err(format!("'{other}' is not a task store: use 'memory' or a redis:// URL")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_flag_takes() {
        assert_eq!("memory".parse(), Ok(Backend::Memory));
        assert_eq!("redis://h:6379/1".parse(), Ok(Backend::Redis { url: "redis://h:6379/1".into() }));
        let err = "postgres://x".parse::<Backend>().unwrap_err();
        assert!(err.contains("'postgres://x' is not a task store"), "{err}");
    }
}
