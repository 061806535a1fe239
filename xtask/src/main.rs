//! matchbox's own tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: makes this machine able to run every test: the guests'
//!   `wasm32-wasip2` target, `redis-server` (installed, and started on
//!   127.0.0.1:6379 where nothing answers there), Chromium for the status
//!   page's test, and the matcher toolchains of the Python and JavaScript
//!   examples (componentize-py in a virtual environment, componentize-js
//!   with npm, both under `<target>/tools`). On Debian or Ubuntu it installs
//!   what is missing with apt-get when it may (as root, or with a sudo that
//!   asks no password); where it cannot, it stops at once, naming what is
//!   missing and how to get it.
//! - `test [ARGS]`: `setup`, then `cargo test --workspace [ARGS]`.
//!
//! It has no dependencies, so it builds in seconds, before anything else.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// The guests' target.
const GUEST_TARGET: &str = "wasm32-wasip2";
/// The Python example's toolchain (PyPI).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The JavaScript example's toolchain (npm).
const COMPONENTIZE_JS: (&str, &str) = ("@bytecodealliance/componentize-js", "0.23.0");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().map(|_| ()),
        Some("test") => setup().and_then(|tools| test(&tools, &args[1..])),
        _ => {
            eprintln!("usage: cargo xtask setup | cargo xtask test [ARGS for cargo test]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\nxtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What a step could not do, for a person.
type Outcome<T> = Result<T, String>;

/// The workspace's root: the parent of this crate.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The target directory cargo builds into: where this binary lives
/// (`<target>/debug/xtask`), which honours `CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the xtask binary's path");
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| workspace().join("target"))
}

/// The matcher toolchains' directory; the tests find the tools there.
fn tools_dir() -> PathBuf {
    target_dir().join("tools")
}

fn step(what: &str) {
    println!("==> {what}");
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Outcome<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{shown}` failed ({status})")),
        Err(e) => Err(format!("could not run `{shown}`: {e}")),
    }
}

/// Debian packages the machine lacks, installed in one go.
#[derive(Default)]
struct Packages {
    missing: BTreeSet<&'static str>,
}

impl Packages {
    fn need(&mut self, package: &'static str) {
        self.missing.insert(package);
    }

    /// Installs what is missing with apt-get, as root or through a sudo that
    /// needs no password; otherwise says what to run.
    fn install(&mut self) -> Outcome<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let list: Vec<&str> = self.missing.iter().copied().collect();
        let list = list.join(" ");
        if !on_path("apt-get") {
            return Err(format!(
                "missing: {list} (Debian package names). This is not a Debian or Ubuntu machine, so install \
                 their equivalents with the system's package manager, then run this again"
            ));
        }
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let sudo = !root
            && Command::new("sudo")
                .args(["-n", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !root && !sudo {
            return Err(format!(
                "missing: {list}. Install them with `sudo apt-get install -y {list}` (this task runs apt-get \
                 itself only as root or with a sudo that asks no password), then run this again"
            ));
        }
        let apt = |args: &[&str]| {
            let mut cmd = if root { Command::new("apt-get") } else { Command::new("sudo") };
            if !root {
                cmd.arg("apt-get");
            }
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        };
        println!("installing with apt-get: {list}");
        run(&mut apt(&["update", "-qq"]))?;
        let mut install = apt(&["install", "-y", "-qq"]);
        install.args(self.missing.iter());
        run(&mut install)?;
        self.missing.clear();
        Ok(())
    }
}

/// Sets the machine up; returns where the tests find the matcher toolchains.
fn setup() -> Outcome<PathBuf> {
    step("the guests' target");
    guest_target()?;

    // Every missing system package is found first and installed at once.
    let mut packages = Packages::default();
    if !on_path("redis-server") || !on_path("redis-cli") {
        packages.need("redis-server");
    }
    if std::env::var_os("CHROME").is_none() && !["chromium", "chromium-browser"].iter().any(|c| on_path(c)) {
        packages.need("chromium");
    }
    if !on_path("python3") {
        packages.need("python3");
    }
    if !on_path("node") || !on_path("npm") {
        packages.need("nodejs");
        packages.need("npm");
    }
    let tools = tools_dir();
    let venv = tools.join("python");
    if on_path("python3") && !venv.join("bin").join("pip").exists() && !can_make_venv() {
        packages.need("python3-venv");
    }
    step("system packages (redis-server, chromium, python3, nodejs)");
    packages.install()?;

    step("redis on 127.0.0.1:6379");
    redis()?;

    step(&format!("the Python example's toolchain ({COMPONENTIZE_PY})"));
    python_tools(&venv)?;

    step(&format!("the JavaScript example's toolchain ({}@{})", COMPONENTIZE_JS.0, COMPONENTIZE_JS.1));
    js_tools(&tools.join("js"))?;
    Ok(tools)
}

fn guest_target() -> Outcome<()> {
    let has_std = || {
        let out = Command::new("rustc").args(["--print", "target-libdir", "--target", GUEST_TARGET]).output();
        let Some(out) = out.ok().filter(|o| o.status.success()) else { return false };
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
    };
    if has_std() {
        return Ok(());
    }
    if !on_path("rustup") {
        return Err(format!(
            "this toolchain lacks the {GUEST_TARGET} target and there is no rustup to add it: install the \
             target's standard library for your rustc, or use rustup (https://rustup.rs)"
        ));
    }
    run(Command::new("rustup").current_dir(workspace()).args(["target", "add", GUEST_TARGET]))
}

fn can_make_venv() -> bool {
    // `ensurepip` is what Debian leaves out of python3 without python3-venv.
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn redis_answers() -> bool {
    TcpStream::connect_timeout(&"127.0.0.1:6379".parse().expect("an address"), Duration::from_millis(500)).is_ok()
}

fn redis() -> Outcome<()> {
    if redis_answers() {
        return Ok(());
    }
    // A throwaway server for the tests: nothing written to disk.
    run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))?;
    for _ in 0..50 {
        if redis_answers() {
            println!("started redis-server on 127.0.0.1:6379");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("started redis-server, but nothing answers on 127.0.0.1:6379".into())
}

fn python_tools(venv: &Path) -> Outcome<()> {
    let tool = venv.join("bin").join("componentize-py");
    let wanted = COMPONENTIZE_PY.rsplit("==").next().expect("a pinned version");
    let current = Command::new(&tool).arg("--version").output().ok().filter(|o| o.status.success());
    if current.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(wanted)) {
        return Ok(());
    }
    if !venv.join("bin").join("pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        COMPONENTIZE_PY,
    ]))
}

fn js_tools(prefix: &Path) -> Outcome<()> {
    let (package, version) = COMPONENTIZE_JS;
    let manifest = prefix.join("node_modules").join(package).join("package.json");
    let installed =
        std::fs::read_to_string(&manifest).is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")));
    if installed {
        return Ok(());
    }
    std::fs::create_dir_all(prefix).map_err(|e| format!("creating {}: {e}", prefix.display()))?;
    run(Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(prefix)
        .args(["--no-audit", "--no-fund", "--silent"])
        .arg(format!("{package}@{version}")))
}

fn test(tools: &Path, args: &[String]) -> Outcome<()> {
    step("cargo test --workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(workspace())
        .args(["test", "--workspace"])
        .args(args)
        .env("MATCHBOX_TOOLS", tools))
}
