//! A matcher author's loop, as an author runs it: `matchbox check` and
//! `matchbox run` answer what a real server answers for the same component
//! and job; a task shows the logs of the caller's own matcher; the Python
//! and JavaScript examples and the three `matchbox new` templates build
//! from source with their toolchains, pass `check`, and rank on a real
//! `matchbox serve`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use matchbox_tests::http::{get, job, post};
use matchbox_tests::{Host, binary, target_dir, tool, workspace};
use serde_json::{Value, json};

fn matchbox(args: &[&str]) -> Output {
    // The precompiled cache of the test run, never the user's.
    let cache = target_dir().join("author-cache");
    Command::new(binary()).args(args).env("MATCHBOX_CACHE_DIR", cache).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn examples(file: &str) -> String {
    workspace().join("host/examples").join(file).display().to_string()
}

/// Uploads `bytes` as `name`: the status and the answer.
async fn put(client: &reqwest::Client, host: &Host, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let reply = client.put(host.url(&format!("/matchers/{name}"))).body(bytes).send().await.unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_answers_what_an_upload_would() {
    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let read = |path: &str| std::fs::read(path).unwrap();
    let cases: Vec<(PathBuf, u16)> = vec![
        (file("mine.wasm", &read(matchbox::testing::MISBEHAVE_WASM)), 201),
        (file("trapper.wasm", &read(matchbox::testing::MISBEHAVE_INFO_TRAP_WASM)), 422),
        (file("nonsense.wasm", &read(matchbox::testing::MISBEHAVE_INFO_NONSENSE_WASM)), 422),
        (file("module.wasm", b"\0asm\x01\0\0\0"), 422),
        (file("garbage.wasm", b"not a component"), 422),
        // A built-in's name is read-only on a server.
        (file("skills.wasm", &read(matchbox::testing::MISBEHAVE_WASM)), 409),
        (file("Bad Name.wasm", &read(matchbox::testing::MISBEHAVE_WASM)), 400),
    ];
    for (path, status) in cases {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let out = matchbox(&["check", path.to_str().unwrap(), "--json"]);
        let checked = stdout_json(&out);
        let (served_status, served) =
            put(&client, &host, &name.replace(' ', "%20"), std::fs::read(&path).unwrap()).await;
        assert_eq!(served_status, status, "{name}: {served}");
        if status == 201 {
            assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
            for field in ["name", "version", "description", "digest", "size", "source"] {
                assert_eq!(checked[field], served[field], "{name}: {field}");
            }
        } else {
            assert_eq!(out.status.code(), Some(2), "{name}: a refusal exits 2: {}", text(&out));
            assert_eq!(checked, served, "{name}: check answers what the upload answers");
        }
    }

    // For a person: what was wrong, and the code a script would match on.
    let out = matchbox(&["check", dir.path().join("module.wasm").to_str().unwrap()]);
    assert!(text(&out).contains("refused: 422 core_module"), "{}", text(&out));
    let out = matchbox(&["check", dir.path().join("mine.wasm").to_str().unwrap()]);
    assert!(text(&out).contains("accepted: PUT /matchers/mine would answer 201 Created"), "{}", text(&out));
    // A limit of serve's, by serve's flag: the same refusal as a server so configured.
    let out = matchbox(&["check", dir.path().join("mine.wasm").to_str().unwrap(), "--max-component-size", "1KiB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("413 too_large"), "{}", text(&out));
    let out = matchbox(&["check", dir.path().join("missing.wasm").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "a missing file is a local error: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_ranks_logs_and_fails_as_the_server_would() {
    let (candidate, postings) = (examples("candidate.json"), examples("postings.json"));

    // A built-in, by name: the CLI's table and each phase's time.
    let out = matchbox(&["run", "skills", "--candidate", &candidate, "--postings", &postings]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.lines().any(|l| l.contains("platform") && l.contains("remote ok")), "{shown}");
    for phase in ["load         built in", "instantiate", "rank  "] {
        assert!(shown.contains(phase), "{phase}: {shown}");
    }

    // An upload-to-be, by file: the same task a server stores, logs included.
    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();
    let wasm = matchbox::testing::MISBEHAVE_WASM;
    let (status, _) = put(&client, &host, "matchbox_misbehave", std::fs::read(wasm).unwrap()).await;
    assert_eq!(status, 201);
    let dir = tempfile::tempdir().unwrap();
    for (behaviour, code, kind) in [
        ("panic", 1, "trap"),
        ("score-high", 1, "contract_violation"),
        ("log-flood", 0, ""),
        ("invalid", 1, "invalid_input"),
    ] {
        let file = dir.path().join(format!("{behaviour}.json"));
        std::fs::write(&file, json!({"id": behaviour, "skills": [{"name": "rust"}]}).to_string()).unwrap();
        let p = dir.path().join("postings.json");
        std::fs::write(&p, json!([{"id": "p1", "title": "Rust engineer", "required_skills": ["rust"]}]).to_string())
            .unwrap();
        let out = matchbox(&[
            "run",
            wasm,
            "--candidate",
            file.to_str().unwrap(),
            "--postings",
            p.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(code), "{behaviour}: {}", text(&out));
        let local = stdout_json(&out);

        let (_, served) =
            post(&client, host.url("/jobs/match?wait=30s"), None, &job("matchbox_misbehave", behaviour)).await;
        assert_eq!(local["status"], served["status"], "{behaviour}");
        assert_eq!(
            local["error"],
            served.get("error").cloned().unwrap_or(Value::Null),
            "{behaviour}: the same failure"
        );
        assert_eq!(local["result"], served.get("result").cloned().unwrap_or(Value::Null), "{behaviour}");
        assert_eq!(local["logs"], served["logs"], "{behaviour}: the same logs as the server's task");
        if !kind.is_empty() {
            assert_eq!(local["error"]["kind"], kind, "{behaviour}");
        }
    }
    // What the logs hold: the panic's message, the flood cut at the caps.
    let (_, panicked) =
        post(&client, host.url("/jobs/match?wait=30s"), None, &job("matchbox_misbehave", "panic")).await;
    assert!(panicked["logs"]["stderr"].as_str().unwrap().contains("panicked"), "{panicked}");
    let (_, flood) =
        post(&client, host.url("/jobs/match?wait=30s"), None, &job("matchbox_misbehave", "log-flood")).await;
    assert_eq!(flood["logs"]["lines"].as_array().unwrap().len(), 100, "the job's cap of lines");
    assert!(flood["logs"]["dropped"].as_u64().unwrap() > 99_000, "{}", flood["logs"]["dropped"]);

    // For a person: the failure's kind and message, the log lines.
    let file = dir.path().join("panic.json");
    let p = dir.path().join("postings.json");
    let out = matchbox(&["run", wasm, "--candidate", file.to_str().unwrap(), "--postings", p.to_str().unwrap()]);
    let shown = text(&out);
    assert!(shown.contains("failed: trap the guest trapped"), "{shown}");
    assert!(shown.contains("stderr:\n  "), "{shown}");
    assert!(shown.contains("compiled, and cached for next time") || shown.contains("from the precompiled cache"));

    // Input the server refuses is refused alike, before anything runs.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"id": ""}"#).unwrap();
    let out = matchbox(&["run", "skills", "--candidate", bad.to_str().unwrap(), "--postings", &postings]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("422 invalid_request candidate.id must not be empty"), "{}", text(&out));
    let out = matchbox(&["run", "nosuch", "--candidate", &candidate, "--postings", &postings]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("unknown_matcher no matcher named 'nosuch'"), "{}", text(&out));
    let out = matchbox(&["run", "skills", "--candidate", &candidate, "--postings", &postings, "--server", "x"]);
    assert_eq!(out.status.code(), Some(4), "a client flag means nothing to run: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_shows_the_logs_of_the_callers_own_matcher_only() {
    let client = reqwest::Client::new();
    let no_skills = json!({"candidate": {"id": "nobody"}, "postings": [{"id": "p1", "title": "Rust engineer"}]});
    for shared in [false, true] {
        let host = Host::start(if shared { &["--shared-matcher-logs"] } else { &[] }).await.unwrap();
        matchbox_tests::http::upload_misbehave(&client, &host, "mine", None).await;
        let (_, own) = post(&client, host.url("/jobs/match?wait=30s"), None, &job("mine", "log-flood")).await;
        assert_eq!(own["status"], "completed");
        assert!(own["logs"]["lines"].as_array().is_some_and(|l| !l.is_empty()), "an upload's logs: {own}");

        // `skills` logs at info when the candidate lists no skills: the
        // operator's line, on a task only when the operator shares it.
        let (_, builtin) = post(&client, host.url("/jobs/match?wait=30s"), None, &no_skills).await;
        assert_eq!(builtin["status"], "completed", "{builtin}");
        if shared {
            let lines = builtin["logs"]["lines"].as_array().unwrap();
            assert!(lines.iter().any(|l| l["level"] == "info"), "{builtin}");
        } else {
            assert!(builtin.get("logs").is_none(), "a built-in's logs stay the operator's: {builtin}");
        }
        // Read back later, the task still has them.
        let id = own["task_id"].as_str().unwrap();
        let (_, again) = get(&client, host.url(&format!("/tasks/{id}")), None).await;
        assert_eq!(again["logs"], own["logs"]);
    }
}

/// Builds `source` into a component with the command `build`, in `dir`.
fn build(what: &str, dir: &Path, build: &mut Command) {
    let out = build.current_dir(dir).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "building {what} failed: {}", text(&out));
}

/// Builds the Python example with componentize-py, as the README says.
fn python_component(dir: &Path, module_dir: &Path, module: &str, out: &Path) {
    build(
        "a Python component",
        module_dir,
        Command::new(tool("python/bin/componentize-py"))
            .arg("-d")
            .arg(dir)
            .args(["-w", "matcher", "componentize", module, "-o"])
            .arg(out),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_and_javascript_examples_build_and_rank_on_a_real_server() {
    let out_dir = tempfile::tempdir().unwrap();
    let wit = workspace().join("wit");
    let python = out_dir.path().join("keywords.wasm");
    python_component(&wit, &workspace().join("guest/python"), "app", &python);
    let js = out_dir.path().join("keywords-js.wasm");
    build(
        "the JavaScript example",
        &workspace().join("guest/js"),
        Command::new(tool("js/node_modules/.bin/componentize-js"))
            .arg("matcher.js")
            .arg("--wit")
            .arg(&wit)
            .args(["--world-name", "matcher", "--disable", "http", "fetch-event", "--out"])
            .arg(&js),
    );

    let host = Host::start(&[]).await.unwrap();
    let client = reqwest::Client::new();
    let candidate: Value = serde_json::from_str(&std::fs::read_to_string(examples("candidate.json")).unwrap()).unwrap();
    let postings: Value = serde_json::from_str(&std::fs::read_to_string(examples("postings.json")).unwrap()).unwrap();
    let mut answers = Vec::new();
    for (name, file) in [("keywords", &python), ("keywords-js", &js)] {
        let out = matchbox(&["check", file.to_str().unwrap(), "--name", name]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let (status, added) = put(&client, &host, name, std::fs::read(file).unwrap()).await;
        assert_eq!(status, 201, "{name}: {added}");
        assert_eq!(added["name"], name);

        let body = json!({"matcher": name, "candidate": candidate, "postings": postings});
        let (_, task) = post(&client, host.url("/jobs/match?wait=60s"), None, &body).await;
        assert_eq!(task["status"], "completed", "{name}: {task}");
        let rankings = task["result"]["rankings"].as_array().unwrap();
        // Both score the share of a posting's skills and title words the
        // candidate names: the platform role first (engineer, rust), the
        // pastry chef last, with nothing in common.
        let order: Vec<&str> = rankings.iter().map(|r| r["posting_id"].as_str().unwrap()).collect();
        assert_eq!(order, ["platform", "data", "pastry"], "{name}: {task}");
        assert_eq!(rankings[2]["score"], 0.0, "{name}: {task}");
        assert!(rankings[0]["reasons"][0].as_str().unwrap().contains("keywords"), "{name}: {task}");
        // Their own uploads: the debug line each writes is on the task.
        let lines = task["logs"]["lines"].as_array().unwrap();
        assert!(lines.iter().any(|l| l["message"].as_str().unwrap().starts_with("ranking 3 postings")), "{task}");
        answers.push(task["result"].clone());
    }
    assert_eq!(answers[0], answers[1], "the two examples implement the same rule");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_template_builds_passes_check_and_runs() {
    let root = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        let name = format!("first-{lang}");
        let dir = root.path().join(&name);
        let out = matchbox(&["new", &name, "--lang", lang, "--dir", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{lang}: {}", text(&out));
        let wasm = match lang {
            "rust" => {
                // The README's command, with the test run's target directory
                // kept warm across runs.
                build(
                    "the Rust template",
                    &dir,
                    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
                        .env("CARGO_TARGET_DIR", target_dir().join("templates")),
                );
                target_dir().join("templates/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")))
            }
            "python" => {
                let out = dir.join(format!("{name}.wasm"));
                python_component(&dir.join("wit"), &dir, "app", &out);
                out
            }
            _ => {
                // `npm run build`, the README's command, with the toolchain
                // `cargo xtask setup` installed on the PATH instead of a
                // download per project.
                let bin = tool("js/node_modules/.bin");
                let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
                build(
                    "the JavaScript template",
                    &dir,
                    Command::new("npm").args(["run", "--silent", "build"]).env("PATH", path),
                );
                dir.join(format!("{name}.wasm"))
            }
        };
        let out = matchbox(&["check", wasm.to_str().unwrap(), "--name", &name, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{lang}: {}", text(&out));
        assert_eq!(stdout_json(&out)["name"], name.as_str());

        let (candidate, postings) = (dir.join("candidate.json"), dir.join("postings.json"));
        let run = ["run", wasm.to_str().unwrap(), "--candidate", candidate.to_str().unwrap()];
        let out = matchbox(&[&run[..], &["--postings", postings.to_str().unwrap(), "--json"]].concat());
        assert_eq!(out.status.code(), Some(0), "{lang}: {}", text(&out));
        let task = stdout_json(&out);
        let ranked: Vec<&str> =
            task["result"]["rankings"].as_array().unwrap().iter().map(|r| r["posting_id"].as_str().unwrap()).collect();
        assert_eq!(ranked, ["backend", "data", "pastry"], "{lang}: {task}");
        assert_eq!(task["result"]["rankings"][0]["reasons"][0], "2/2 required skills", "{lang}");
    }
}
