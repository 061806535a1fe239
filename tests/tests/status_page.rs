//! The live status page in a real headless Chromium against a real host:
//! the page loads with nothing from outside, its script fetches `/status`,
//! and the figures it shows agree with the API. A screenshot is saved to
//! `target/test-artifacts/status-page.png`.
//!
//! Needs Chromium (Debian's `chromium` package; `.ci/run` installs it), or
//! the browser named by `CHROME`.

use std::path::PathBuf;
use std::process::Command;

use matchbox_tests::Host;
use matchbox_tests::http::{BOUND, eventually};
use matchbox_tests::webhooks::{Answer, WebhookReceiver};
use serde_json::{Value, json};

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROME") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!("the status page test needs Chromium: `apt-get install chromium` (as .ci/run does), or set CHROME");
}

/// Runs headless Chromium on `url` with `args`, letting the page's script
/// run for `budget_ms` of virtual time.
fn headless(url: &str, profile: &tempfile::TempDir, budget_ms: u32, args: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium")
}

/// The text inside the element with `id`, from a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = dom.find(&marker).unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}")) + marker.len();
    let start = at + dom[at..].find('>').unwrap() + 1;
    &dom[start..start + dom[start..].find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_what_the_api_says() {
    let secret = matchbox::webhooks::Secret::generate().unwrap().expose();
    // One job's callback is never answered (its delivery stays pending),
    // another's is refused for good (failed).
    let silent = WebhookReceiver::start(&secret, |_, _| Answer::Hold).await;
    let gone = WebhookReceiver::start(&secret, |_, _| Answer::Status(410)).await;
    let host = Host::start(&["--webhook-secret", &secret, "--callback-allow", "127.0.0.1", "--callback-timeout", "1h"])
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let misbehave = std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap();
    let put = client.put(host.url("/matchers/misbehave")).body(misbehave).send().await.unwrap();
    assert_eq!(put.status(), 201);
    let callbacks = [Some(silent.url("/")), Some(gone.url("/")), None];
    for (i, candidate) in ["ada", "grace", "score-high"].iter().enumerate() {
        let mut job = json!({
            "matcher": if i == 2 { "misbehave" } else { "skills" },
            "candidate": {"id": candidate, "skills": [{"name": "rust"}]},
            "postings": [{"id": "p1", "title": "Rust engineer", "required_skills": ["rust"]}]
        });
        if let Some(url) = &callbacks[i] {
            job["callback"] = json!({ "url": url });
        }
        let reply = client.post(host.url("/jobs/match?wait=30s")).json(&job).send().await.unwrap();
        assert_eq!(reply.status(), 200);
    }
    silent.wait_for(1, BOUND).await;
    gone.wait_for(1, BOUND).await;
    let mut status = Value::Null;
    eventually("the refused delivery to be counted", async || {
        status = client.get(host.url("/status")).send().await.unwrap().json().await.unwrap();
        status["webhooks"]["failed"] == 1
    })
    .await;
    assert_eq!(status["webhooks"]["pending"], 1, "{status}");

    let profile = tempfile::tempdir().unwrap();
    let out = headless(&host.url("/"), &profile, 5000, &["--dump-dom"]);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8(out.stdout).unwrap();

    let refreshes: u32 = {
        let marker = "data-refreshes=\"";
        let start = dom.find(marker).expect("the main element") + marker.len();
        dom[start..start + dom[start..].find('"').unwrap()].parse().unwrap()
    };
    assert!(refreshes >= 1, "the page's script never read /status:\n{dom}");
    assert!(text_of(&dom, "state").starts_with("updated "), "the last refresh worked: {}", text_of(&dom, "state"));
    assert_eq!(text_of(&dom, "tasks"), status["tasks"]["total"].to_string());
    assert_eq!(text_of(&dom, "tasks"), "3");
    for state in ["pending", "running", "completed", "failed", "cancelled"] {
        assert_eq!(text_of(&dom, &format!("tasks-{state}")), status["tasks"][state].to_string(), "{state}");
    }
    assert_eq!((text_of(&dom, "tasks-completed"), text_of(&dom, "tasks-failed")), ("2", "1"));
    assert_eq!(text_of(&dom, "live-instances"), status["live_instances"].to_string());
    assert_eq!(text_of(&dom, "queued"), status["queued"].to_string());
    assert_eq!((text_of(&dom, "webhooks-pending"), text_of(&dom, "webhooks-failed")), ("1", "1"));
    assert!(text_of(&dom, "resident-memory").ends_with(" MiB"));
    assert!(dom.contains("id=\"memory-line\""), "the memory chart is drawn");
    for matcher in status["matchers"].as_array().unwrap() {
        let name = matcher["name"].as_str().unwrap();
        assert!(dom.contains(&format!("<td class=\"name\">{name}</td>")), "matcher {name} is listed");
    }
    // The figures are read at once on load, not at the first refresh.
    let early = headless(&host.url("/"), &profile, 300, &["--dump-dom"]);
    let early = String::from_utf8(early.stdout).unwrap();
    assert!(text_of(&early, "resident-memory").ends_with(" MiB"), "{}", text_of(&early, "resident-memory"));
    assert_eq!(text_of(&early, "tasks"), "3");

    let page = client.get(host.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(only_local_links(&page) && !page.contains("src=") && !page.contains("href="), "nothing from outside");

    // The screenshot, for people (and the README).
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let out = headless(
        &host.url("/"),
        &profile,
        5000,
        &[&format!("--screenshot={}", png.display()), "--window-size=1280,860"],
    );
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "a real PNG ({} bytes)", bytes.len());
}

/// The only absolute URL the page may hold is the SVG namespace's name.
fn only_local_links(page: &str) -> bool {
    page.match_indices("http").all(|(i, _)| page[i..].starts_with("http://www.w3.org/2000/svg"))
}
