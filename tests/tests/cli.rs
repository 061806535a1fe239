//! The `matchbox` client commands against a real server: what a script
//! sees (JSON, exit codes, the server's messages) and what a person sees.

use std::process::Output;

use matchbox_tests::{Host, binary};
use serde_json::Value;

fn examples(file: &str) -> String {
    format!("{}/../host/examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn run(host: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary()).args(args).args(["--server", host]).output().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_task_and_matchers() {
    let host = Host::start(&[]).await.unwrap();
    let server = format!("http://{}", host.addr);
    let (candidate, postings) = (examples("candidate.json"), examples("postings.json"));

    let out = run(&server, &["submit", "--candidate", &candidate, "--postings", &postings, "--wait", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let task = stdout_json(&out);
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["rankings"][0]["posting_id"], "platform");

    let id = task["task_id"].as_str().unwrap();
    let out = run(&server, &["task", id]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("(completed, matcher skills)"), "{table}");
    assert!(table.lines().any(|l| l.contains("platform") && l.contains("remote ok")), "{table}");

    let out = run(&server, &["submit", "--candidate", &candidate, "--postings", &postings]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim().len(), 36, "without --wait the task id is printed: {printed}");

    let wasm = matchbox::testing::MISBEHAVE_WASM;
    let out = run(&server, &["matchers", "add", "mine", wasm, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["name"], "mine");
    let out = run(&server, &["matchers", "list", "--json"]);
    let names: Vec<String> =
        stdout_json(&out)["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().into()).collect();
    assert_eq!(names, ["mine", "skills", "text"]);
    let out =
        run(&server, &["submit", "--candidate", &candidate, "--postings", &postings, "--matcher", "mine", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A task that fails exits 1 and says why.
    let dir = tempfile::tempdir().unwrap();
    let breaker = dir.path().join("candidate.json");
    std::fs::write(&breaker, r#"{"id": "score-high"}"#).unwrap();
    let breaker = breaker.to_str().unwrap();
    let out = run(&server, &["submit", "--candidate", breaker, "--postings", &postings, "--matcher", "mine", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("contract_violation"));
    assert!(run(&server, &["matchers", "rm", "mine"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_show_the_server_message_and_exit_codes_tell_them_apart() {
    let host = Host::start(&[]).await.unwrap();
    let server = format!("http://{}", host.addr);

    let out = run(&server, &["task", "not-a-task"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'not-a-task' is not a task id"));

    let out = run(&server, &["matchers", "rm", "skills"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in"));

    let (candidate, postings) = (examples("candidate.json"), examples("postings.json"));
    let out = run(&server, &["submit", "--candidate", &candidate, "--postings", &postings, "--top-k", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("options.top_k must be between 1 and 1000"));

    let unreachable = format!("http://127.0.0.1:{}", matchbox_tests::free_port());
    let out = run(&unreachable, &["matchers", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

/// An operator adds a tenant with the real command; the key it prints once is
/// the one the server then takes, and nothing else is.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_added_on_the_command_line_can_submit_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("matchbox.toml");
    let config = config.to_str().unwrap();
    let add = std::process::Command::new(binary())
        .args(["tenant", "add", "acme", "--config", config, "--concurrent-jobs", "1"])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let printed = String::from_utf8(add.stdout).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "the key, then the webhook signing secret, a line each: {printed}");
    let key = lines[0];
    assert!(lines[1].starts_with("whsec_"), "{printed}");
    assert!(!std::fs::read_to_string(config).unwrap().contains(key), "the file keeps only the hash");

    let host = Host::start(&["--config", config]).await.unwrap();
    let server = format!("http://{}", host.addr);
    let (candidate, postings) = (examples("candidate.json"), examples("postings.json"));
    let submit = ["submit", "--candidate", &candidate, "--postings", &postings, "--wait", "--json"];

    let out = run(&server, &submit);
    assert_eq!(out.status.code(), Some(2), "no key: refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&server, &[&submit[..], &["--api-key", key]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["tenant"], "acme");
}

#[test]
fn without_tenants_a_public_address_is_refused() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("MATCHBOX_CONFIG")
        .env_remove("MATCHBOX_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without API keys"), "{stderr}");
}

/// The client's connection flags go before or after the subcommand, and mean
/// nothing to `serve`.
#[tokio::test(flavor = "multi_thread")]
async fn server_goes_before_or_after_the_subcommand() {
    let host = Host::start(&[]).await.unwrap();
    let server = format!("http://{}", host.addr);
    let before = std::process::Command::new(binary())
        .args(["--server", &server, "--json", "matchers", "list"])
        .output()
        .unwrap();
    assert!(before.status.success(), "{}", String::from_utf8_lossy(&before.stderr));
    assert_eq!(stdout_json(&before)["matchers"][0]["name"], "skills");
    let after = run(&server, &["matchers", "list", "--json"]);
    assert_eq!(stdout_json(&after), stdout_json(&before));

    let serve = std::process::Command::new(binary()).args(["serve", "--server", &server]).output().unwrap();
    assert_eq!(serve.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("--server is a flag of the client commands"));
}

/// Local mistakes are told apart from the server's refusals: exit 4, and the
/// file named.
#[tokio::test(flavor = "multi_thread")]
async fn local_errors_exit_4_and_name_the_file() {
    let host = Host::start(&[]).await.unwrap();
    let server = format!("http://{}", host.addr);
    let postings = examples("postings.json");

    let out = run(&server, &["submit", "--candidate", "nonexist.json", "--postings", &postings]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexist.json"), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("candidate.json");
    std::fs::write(&broken, "{not json").unwrap();
    let out = run(&server, &["submit", "--candidate", broken.to_str().unwrap(), "--postings", &postings]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("candidate.json: not JSON"));

    let out = run(&server, &["submit", "--postings", &postings]);
    assert_eq!(out.status.code(), Some(4), "a wrong command line is local too");
    let out = run(&server, &["matchers", "add", "x", "nonexist.wasm"]);
    assert_eq!(out.status.code(), Some(4));
}

/// A task deleted while `submit --wait` waits for it exits 1 and says so;
/// `task --wait` is a long poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_deleted_while_waited_for_exits_1() {
    use std::io::BufRead as _;
    let host = Host::start(&[]).await.unwrap();
    let server = format!("http://{}", host.addr);
    let client = reqwest::Client::new();
    matchbox_tests::http::upload_misbehave(&client, &host, "misbehave", None).await;
    let dir = tempfile::tempdir().unwrap();
    let sleeper = dir.path().join("candidate.json");
    std::fs::write(&sleeper, r#"{"id": "sleep"}"#).unwrap();
    let (sleeper, postings) = (sleeper.to_str().unwrap(), examples("postings.json"));
    let submit = ["submit", "--candidate", sleeper, "--postings", &postings, "--matcher", "misbehave"];

    // `task --wait` on a job that does not end answers after its wait, with
    // the task as it is then.
    let out = run(&server, &submit);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let started = std::time::Instant::now();
    let polled = run(&server, &["task", &id, "--wait", "1s", "--json"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "the long poll held");
    assert!(polled.status.success(), "{}", String::from_utf8_lossy(&polled.stderr));
    assert!(matches!(stdout_json(&polled)["status"].as_str(), Some("pending" | "running")));
    let bad = run(&server, &["task", &id, "--wait", "bogus"]);
    assert_eq!(bad.status.code(), Some(2), "a bad wait is the server's 400");
    assert_eq!(client.delete(host.url(&format!("/tasks/{id}"))).send().await.unwrap().status(), 204);

    // Off a terminal, `submit --wait` says which task it waits for.
    let mut waiting = std::process::Command::new(binary())
        .args(submit)
        .args(["--wait", "--server", &server])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let id = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no task id in {line:?}")).to_string();
    assert_eq!(client.delete(host.url(&format!("/tasks/{id}"))).send().await.unwrap().status(), 204);
    let status = waiting.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains(&format!("the task {id} was deleted before it ended")), "{rest}");
}

/// `submit --wait` follows the task's event stream: the host is asked for
/// `/tasks/{id}/events`, and never long-polled.
#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_follows_the_tasks_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("host.log");
    let host = Host::start_logged(&[], &[("RUST_LOG", "tower_http=debug")], Some(&log)).await.unwrap();
    let server = format!("http://{}", host.addr);
    let (candidate, postings) = (examples("candidate.json"), examples("postings.json"));
    let out = run(&server, &["submit", "--candidate", &candidate, "--postings", &postings, "--wait", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["status"], "completed");
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.contains("/events"), "the event stream was not asked for:\n{requests}");
    assert!(!requests.contains("?wait="), "a long poll was made:\n{requests}");
}
