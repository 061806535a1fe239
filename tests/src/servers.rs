//! Redis servers of a test's own: one `redis-server`, or a Redis Cluster of
//! several on loopback ports. Both are started from Debian's `redis-server`
//! package (which `.ci/run` installs) and fail loudly when it is missing;
//! dropping one kills its processes. Tests that stop, restart or fail over
//! Redis use these, never the shared server on 6379.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use redis::aio::ConnectionLike;

use crate::free_port;

/// How long a server may take to listen, and a cluster to agree on its
/// slots or to fail over.
const SETTLE: Duration = Duration::from_secs(30);

const MISSING: &str = "starting redis-server (install Debian's redis-server package, as .ci/run does)";

/// A `redis-server` of a test's own, on a free loopback port, keeping
/// nothing on disk unless asked to.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Its data directory, when it persists.
    dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A server that keeps nothing.
    pub async fn start() -> anyhow::Result<RedisServer> {
        let mut server = RedisServer { port: free_port(), child: None, dir: None };
        server.restart().await?;
        Ok(server)
    }

    /// A server that writes every change to its append-only file before
    /// answering, so a restart loses nothing it acknowledged.
    pub async fn start_persistent() -> anyhow::Result<RedisServer> {
        let mut server = RedisServer { port: free_port(), child: None, dir: Some(tempfile::tempdir()?) };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &self.dir {
            Some(dir) => command.args(["--appendonly", "yes", "--appendfsync", "always"]).arg("--dir").arg(dir.path()),
            None => command.args(["--appendonly", "no"]),
        };
        self.child = Some(command.stdout(Stdio::null()).spawn().context(MISSING)?);
        listening(self.port).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn listening(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("redis-server did not listen on port {port} within {SETTLE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What `redis-cli -p port args…` printed, or why it failed.
fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli (it comes with Debian's redis-server package)")?;
    if !out.status.success() {
        bail!("redis-cli -p {port} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Redis Cluster of a test's own: a few primaries (with replicas, if
/// asked) on loopback ports, every slot assigned. Its nodes notice a dead
/// peer within a second, so a replica takes over from a killed primary
/// within a few.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, created with
    /// `redis-cli --cluster create` and waited for until every node agrees
    /// the cluster is up.
    ///
    /// Ports are chosen free, then bound by the nodes: another test's
    /// process may take one in between. A cluster that does not come up is
    /// started again, twice at most, on other ports; a third failure is the
    /// test's.
    pub async fn start(primaries: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        let mut attempt = 1;
        loop {
            match RedisCluster::start_once(primaries, replicas).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < 3 => {
                    eprintln!("a Redis Cluster did not come up ({e:#}); starting another on other ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(primaries: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let (port, bus) = (free_port(), free_port());
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .arg("--cluster-config-file")
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(dir.path())
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .context(MISSING)?;
            nodes.push((port, Some(child)));
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        for (port, _) in &cluster.nodes {
            listening(*port).await?;
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        let replicas = replicas.to_string();
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        cli(cluster.nodes[0].0, &create)?;
        cluster.settle().await?;
        Ok(cluster)
    }

    /// `redis+cluster://` and the address of every node, for `--store`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The ports of the nodes alive.
    pub fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|(_, child)| child.is_some()).map(|(port, _)| *port)
    }

    /// Waits until every live node says the cluster is up with every slot
    /// served, and every replica has its primary's data.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let mut up = true;
            for port in self.live() {
                let info = cli(port, &["CLUSTER", "INFO"])?;
                let replication = cli(port, &["INFO", "replication"])?;
                up &= info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
                up &= !replication.contains("role:slave") || replication.contains("master_link_status:up");
            }
            if up {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the Redis Cluster did not settle within {SETTLE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port of the primary that serves `key`'s hash slot now.
    pub fn primary_of(&self, key: &str) -> anyhow::Result<u16> {
        let asked = self.live().next().context("no node of the cluster is alive")?;
        let slot: u16 = cli(asked, &["CLUSTER", "KEYSLOT", key])?.trim().parse()?;
        for line in cli(asked, &["CLUSTER", "NODES"])?.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 =
                fields[1].split(['@', ',']).next().and_then(|a| a.rsplit(':').next()).unwrap_or("").parse()?;
            for range in &fields[8..] {
                let mut ends = range.split('-').map(str::parse::<u16>);
                if let Some(Ok(first)) = ends.next() {
                    let last = ends.next().and_then(Result::ok).unwrap_or(first);
                    if (first..=last).contains(&slot) {
                        return Ok(port);
                    }
                }
            }
        }
        bail!("no live primary serves slot {slot}")
    }

    /// Kills the node on `port` at once, as a crash would.
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port
                && let Some(mut child) = child.take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in self.live().collect::<Vec<_>>() {
            self.kill(port);
        }
    }
}

/// A connection to whichever `--store` URL a test runs against (a
/// `redis://` server or a `redis+cluster://` cluster), for looking at the
/// keys hosts left.
pub enum Connection {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Connection {
    pub async fn open(store: &str) -> anyhow::Result<Connection> {
        Ok(match store.strip_prefix("redis+cluster://") {
            Some(nodes) => {
                let nodes: Vec<String> = nodes.split(',').map(|n| format!("redis://{n}")).collect();
                Connection::Cluster(redis::cluster::ClusterClient::new(nodes)?.get_async_connection().await?)
            }
            None => Connection::Single(redis::Client::open(store)?.get_multiplexed_async_connection().await?),
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
