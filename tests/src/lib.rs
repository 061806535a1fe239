//! End-to-end test support: real `matchbox serve` processes on loopback.
//!
//! [`Host::start`] builds the `matchbox` binary once per test run (a no-op
//! when it is fresh), starts it on a free port with the given flags, and
//! waits for `/healthz`. Dropping a [`Host`] kills its process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub mod http;
pub mod load;
mod servers;
pub mod webhooks;

pub use servers::{Connection, RedisCluster, RedisServer};

/// How long a host may take to answer `/healthz` after it starts.
const STARTUP: Duration = Duration::from_secs(60);

/// The `matchbox` binary of this workspace, built for the profile the caller
/// was built with.
pub fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/<test binary>, or target/<profile>/<bin> for
        // the benchmark binaries that start hosts too.
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut profile_dir = exe.parent().expect("a target directory");
        if profile_dir.file_name().is_some_and(|d| d == "deps") {
            profile_dir = profile_dir.parent().expect("a target/<profile> directory");
        }
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cargo.args(["build", "--quiet", "--release", "-p", "matchbox", "--bin", "matchbox"]);
        } else {
            // The same selection `cargo test --workspace` builds, so the
            // features match and this is a no-op after it: building the
            // binary alone would resolve features without the dev-dependencies
            // and rebuild much of the dependency tree.
            cargo.args(["build", "--quiet", "--workspace", "--tests"]);
        }
        let status = cargo.status().expect("running cargo to build matchbox");
        assert!(status.success(), "building the matchbox binary failed");
        profile_dir.join("matchbox")
    })
}

/// The target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    binary().parent().and_then(|p| p.parent()).expect("target/<profile>/matchbox").to_path_buf()
}

/// A matcher toolchain's program, installed by `cargo xtask setup` under
/// `$MATCHBOX_TOOLS` (which `cargo xtask test` sets) or `<target>/tools`:
/// `python/bin/componentize-py`, `js/node_modules/.bin/componentize-js`.
/// Panics, naming the command that installs it, when it is not there.
pub fn tool(relative: &str) -> PathBuf {
    let dir = std::env::var_os("MATCHBOX_TOOLS").map(PathBuf::from).unwrap_or_else(|| target_dir().join("tools"));
    let path = dir.join(relative);
    assert!(
        path.exists(),
        "{} is missing: the examples' toolchains are installed by `cargo xtask setup` (the README's test \
         command, `cargo xtask test`, runs it first)",
        path.display()
    );
    path
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A free loopback port, chosen by the kernel.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

pub struct Host {
    pub addr: SocketAddr,
    child: Child,
    /// The host's data and cache directories: its own, never the user's.
    _dirs: tempfile::TempDir,
}

impl Host {
    /// Starts `matchbox serve` with `args` on a free loopback port, with data
    /// and cache directories of its own.
    pub async fn start(args: &[&str]) -> anyhow::Result<Host> {
        Host::start_logged(args, &[], None).await
    }

    /// [`Host::start`] with extra environment variables (`RUST_LOG` among
    /// them, `warn` otherwise), and its standard error (its log) written to
    /// `log` instead of the test's.
    pub async fn start_logged(
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Host> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let dirs = tempfile::tempdir()?;
        let mut command = Command::new(binary());
        command.arg("serve").args(["--listen", &addr.to_string()]);
        // The host's own directories, unless the caller gives its own.
        for (flag, dir) in [("--data-dir", "data"), ("--cache-dir", "cache")] {
            if !args.contains(&flag) {
                command.arg(flag).arg(dirs.path().join(dir));
            }
        }
        command
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(log) = log {
            command.stderr(std::fs::File::create(log).context("creating the host's log file")?);
        }
        let child = command.spawn().context("starting matchbox")?;
        let mut host = Host { addr, child, _dirs: dirs };
        host.wait_healthy().await?;
        Ok(host)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("matchbox exited during startup: {status}");
            }
            if let Ok(r) = client.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("matchbox did not answer /healthz within {STARTUP:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("matchbox did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process in bytes, from /proc.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
        let kib: u64 = line.split_whitespace().nth(1).context("VmRSS without a value")?.parse()?;
        Ok(kib * 1024)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
