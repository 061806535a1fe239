//! Which task store a host runs, as `--store` names it.

use std::str::FromStr;

/// `memory`, a Redis URL (`redis://host:6379/0`), or a Redis Cluster
/// (`redis+cluster://host:port,host:port`: some of its nodes, the client
/// finds the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded table of this process.
    Memory,
    /// A Redis server, shared by the hosts of one deployment.
    Redis { url: String },
    /// A Redis Cluster: the `redis://host:port` URLs of some of its nodes.
    RedisCluster { nodes: Vec<String> },
}

impl Backend {
    /// Whether the task table is shared by the hosts of a deployment.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Backend::Memory)
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "memory" => Ok(Backend::Memory),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Backend::Redis { url: url.to_string() })
            }
            cluster if cluster.starts_with("redis+cluster://") => {
                let nodes: Vec<String> = cluster["redis+cluster://".len()..]
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("redis://{n}"))
                    .collect();
                if nodes.is_empty() {
                    return Err(format!("'{cluster}' names no node: use redis+cluster://host:port,host:port"));
                }
                Ok(Backend::RedisCluster { nodes })
            }
            other => Err(format!(
                "'{other}' is not a task store: use 'memory', a redis:// URL or redis+cluster://host:port,host:port"
            )),
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
        let cluster = "redis+cluster://10.0.0.1:7000, 10.0.0.2:7000".parse();
        assert_eq!(
            cluster,
            Ok(Backend::RedisCluster { nodes: vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()] })
        );
        assert!("redis+cluster://".parse::<Backend>().is_err());
        let err = "postgres://x".parse::<Backend>().unwrap_err();
        assert!(err.contains("'postgres://x' is not a task store"), "{err}");
    }
}
