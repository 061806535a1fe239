//! `matchbox serve` as a user runs it: a real process on its embedded
//! defaults, a real HTTP client, a real signal.

use matchbox_tests::Host;
use serde_json::{Value, json};

fn job() -> Value {
    json!({
        "candidate": {"id": "ada", "skills": [{"name": "Rust", "weight": 1.0}], "years_experience": 4, "remote_ok": true},
        "postings": [
            {"id": "bakery", "title": "Baker", "required_skills": ["baking"]},
            {"id": "infra", "title": "Rust engineer", "required_skills": ["rust"], "remote": true}
        ]
    })
}

#[tokio::test]
async fn serves_on_embedded_defaults_and_stops_on_sigterm() {
    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();

    let matchers: Value = client.get(host.url("/matchers")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        matchers["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["skills", "text"], "the built-in matchers are embedded");

    let reply = client.post(host.url("/jobs/match?wait=30s")).json(&job()).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let task: Value = reply.json().await.unwrap();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["rankings"][0]["posting_id"], "infra");

    let ready = client.get(host.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let status = host.terminate().await.unwrap();
    assert!(status.success(), "matchbox exited with {status} after SIGTERM");
}

/// Starts `matchbox serve` with `args` and `env`, its log in a file: the
/// host and what it logged, or what it logged before it exited.
async fn start(args: &[&str], env: &[(&str, &str)]) -> (Result<Host, String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let host = Host::start_logged(args, env, Some(&log)).await;
    let read = || std::fs::read_to_string(&log).unwrap();
    (host.map_err(|e| format!("{e}: {}", read())), dir)
}

fn log_of(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap()
}

/// Flags say what they mean: the usual spellings of a boolean, host names
/// for addresses; nonsense is refused with the flag named.
#[tokio::test]
async fn configuration_says_what_it_means() {
    for yes in ["1", "yes", "on", "true", "YES"] {
        // On a loopback address the flag changes nothing: the host starts
        // if the value parses.
        let (host, _dir) = start(&[], &[("MATCHBOX_INSECURE_NO_AUTH", yes)]).await;
        host.unwrap_or_else(|e| panic!("MATCHBOX_INSECURE_NO_AUTH={yes}: {e}"));
    }
    for no in ["no", "off", "0"] {
        let out = exits_within(
            std::process::Command::new(matchbox_tests::binary())
                .args(["serve", "--listen", "0.0.0.0:0"])
                .env("MATCHBOX_INSECURE_NO_AUTH", no)
                .env_remove("MATCHBOX_CONFIG"),
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen"), "{no} means no");
    }

    let port = matchbox_tests::free_port();
    let (host, _dir) = start(&["--admin-listen", &format!("localhost:{port}")], &[]).await;
    let _host = host.expect("a host name is an address");
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    for (flag, value) in
        [("--workers", "0"), ("--task-ttl", "0s"), ("--max-postings", "0"), ("--max-memory", "0MiB"), ("--queue", "0")]
    {
        let out = exits_within(std::process::Command::new(matchbox_tests::binary()).args(["serve", flag, value]));
        assert_eq!(out.status.code(), Some(4), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("for '{flag} <")), "{flag} {value}: {stderr}");
    }
}

/// Runs `command`, which must exit within 30 s (a host that starts serving
/// instead is killed, and the test fails).
fn exits_within(command: &mut std::process::Command) -> std::process::Output {
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("{command:?} did not exit: it serves");
}

/// Every tenants-file error stops the host before it says it serves, and
/// names the file.
#[tokio::test]
async fn a_bad_tenants_file_fails_before_the_host_says_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.toml");
    let hash = "0".repeat(64);
    let cases = [
        ("", "no [[tenant]]"),
        ("[[tenant]]\nname = \"a\"\nkey_sha256 = \"00\"\n", "tenant 'a'"),
        (&*format!("[[tenant]]\nname = \"a\"\nkey_sha256 = \"{hash}\"\nmemroy = \"1MiB\"\n"), "memroy"),
        (&*format!("[[tenant]]\nname = \"a\"\nkey_sha256 = \"{hash}\"\nmatchers = [\"nosuch\"]\n"), "'nosuch'"),
    ];
    for (text, says) in cases {
        std::fs::write(&file, text).unwrap();
        let (host, logs) = start(&["--config", file.to_str().unwrap()], &[("RUST_LOG", "info")]).await;
        let err = host.err().unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(err.contains("exited during startup: exit status: 1"), "{err}");
        let log = log_of(&logs);
        assert!(log.contains(says) && log.contains(file.to_str().unwrap()), "{text:?}: {log}");
        assert!(!log.contains("matchbox serving"), "{text:?}: said it serves first: {log}");
    }
    std::fs::remove_file(&file).unwrap();
    let (host, logs) = start(&["--config", file.to_str().unwrap()], &[("RUST_LOG", "info")]).await;
    assert!(host.is_err());
    assert!(log_of(&logs).contains("reading the tenants file"));
}

/// Logs in a file are plain text, and a job on a built-in matcher logs the
/// line the README shows.
#[tokio::test]
async fn logs_in_a_file_are_plain_and_the_builtins_log_what_the_readme_shows() {
    let (host, dir) = start(&[], &[("RUST_LOG", "info")]).await;
    let host = host.unwrap();
    let client = reqwest::Client::new();
    let mut skilless = job();
    skilless["candidate"]["skills"] = json!([]);
    let reply = client.post(host.url("/jobs/match?wait=30s")).json(&skilless).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    matchbox_tests::http::upload_misbehave(&client, &host, "misbehave", None).await;
    let failing = matchbox_tests::http::job("misbehave", "invalid");
    let reply = client.post(host.url("/jobs/match?wait=30s")).json(&failing).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    host.terminate().await.unwrap();
    let log = log_of(&dir);
    assert!(!log.contains('\x1b'), "colour codes in a file: {log:?}");
    assert!(log.contains("matchbox serving"), "{log}");
    let line = log.lines().find(|l| l.contains("matchbox::guest")).unwrap_or_else(|| panic!("no guest line: {log}"));
    assert!(
        line.contains("INFO task{task_id=")
            && line.contains("matcher=skills}: matchbox::guest: the candidate lists no skills"),
        "{line}"
    );
    let failed = log.lines().find(|l| l.contains("job failed")).unwrap_or_else(|| panic!("no failure line: {log}"));
    assert!(failed.contains("matcher=misbehave}: matchbox::jobs: job failed kind=invalid_input reason=\""), "{failed}");
}

/// A host whose limits a cached component is over says that, not that the
/// cache could not be trusted; directory matchers are not held to the
/// upload cap.
#[tokio::test]
async fn limits_are_named_before_the_cache_is_blamed() {
    let dirs = tempfile::tempdir().unwrap();
    let cache = dirs.path().join("cache");
    let cache = cache.to_str().unwrap();
    let matchers = dirs.path().join("matchers");
    std::fs::create_dir(&matchers).unwrap();
    std::fs::copy(matchbox::testing::MISBEHAVE_WASM, matchers.join("mine.wasm")).unwrap();
    let matchers = matchers.to_str().unwrap();

    // Warms the cache, and loads a directory matcher over the upload cap.
    let (host, _logs) =
        start(&["--cache-dir", cache, "--matchers-dir", matchers, "--max-component-size", "1KiB"], &[]).await;
    let host = host.expect("a directory matcher is not an upload");
    let listed: Value = reqwest::get(host.url("/matchers/mine")).await.unwrap().json().await.unwrap();
    assert_eq!(listed["source"], "directory");
    host.terminate().await.unwrap();

    let (host, logs) = start(&["--cache-dir", cache, "--max-memory", "1MiB"], &[("RUST_LOG", "info")]).await;
    let err = host.err().expect("the built-ins do not fit in 1 MiB");
    assert!(err.contains("over this host's limits"), "{err}");
    assert!(!log_of(&logs).contains("could not be trusted"), "{}", log_of(&logs));
}
