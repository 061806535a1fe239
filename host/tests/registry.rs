//! Plugging in matchers: uploads validated against the world, replacement
//! under load, pinning by digest, persistence and the precompiled cache.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::BOUND;
use matchbox::registry::{MatcherRegistry, RegistryConfig, Source};
use matchbox::runtime::{Sandbox, SandboxConfig};
use matchbox::{Config, Matchbox};
use serde_json::{Value, json};

fn misbehave() -> Vec<u8> {
    std::fs::read(matchbox::testing::MISBEHAVE_WASM).unwrap()
}

fn guest(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn service(dirs: &tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> Arc<Matchbox> {
    let mut config = Config {
        workers: Some(2),
        data_dir: Some(dirs.path().join("data")),
        cache_dir: Some(dirs.path().join("cache")),
        ..Config::default()
    };
    configure(&mut config);
    Matchbox::new(config).await.unwrap()
}

async fn call(app: &Arc<Matchbox>, method: Method, uri: &str, body: Body, content_type: &str) -> (StatusCode, Value) {
    let request =
        Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, content_type).body(body).unwrap();
    let reply = common::send(matchbox::app(app.clone()), request).await;
    (reply.status, reply.body)
}

async fn upload(app: &Arc<Matchbox>, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    call(app, Method::PUT, &format!("/matchers/{name}"), Body::from(bytes), "application/wasm").await
}

async fn submit(app: &Arc<Matchbox>, matcher: &str, mode: &str, wait: &str) -> (StatusCode, Value) {
    let body = json!({
        "matcher": matcher,
        "candidate": {"id": mode, "skills": [{"name": "rust"}]},
        "postings": [{"id": "p1", "title": "Rust engineer", "required_skills": ["rust"]}]
    });
    call(app, Method::POST, &format!("/jobs/match?wait={wait}"), Body::from(body.to_string()), "application/json").await
}

async fn names(app: &Arc<Matchbox>) -> Vec<String> {
    let (_, body) = call(app, Method::GET, "/matchers", Body::empty(), "application/json").await;
    body["matchers"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_upload_is_refused_with_a_reason_and_changes_nothing() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |c| c.max_component_size = 1 << 20).await;
    let before = names(&app).await;
    let wrong_signature = wat(r#"(component
        (core module $m (memory (export "memory") 1) (func (export "info") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func (export "info") (result string) (canon lift (core func $i "info") (memory (core memory $i "memory")))))"#);
    let foreign_import = wat(r#"(component (import "acme:vault/secrets" (instance (export "open" (func)))))"#);
    // The engine runs without the component model's async features (the
    // 0.1 contract is synchronous, and they cost every job): a component
    // that uses one is refused as one that does not compile.
    let async_builtin = wat(r#"(component (core func (canon backpressure.inc)))"#);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        ("garbage", b"this is not wasm at all".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "not_wasm", "magic"),
        ("core", wat("(module)"), StatusCode::UNPROCESSABLE_ENTITY, "core_module", "core WebAssembly module"),
        ("wrong-sig", wrong_signature, StatusCode::UNPROCESSABLE_ENTITY, "wrong_world", "matchbox:matcher"),
        ("foreign", foreign_import, StatusCode::UNPROCESSABLE_ENTITY, "wrong_world", "acme:vault/secrets"),
        ("async", async_builtin, StatusCode::UNPROCESSABLE_ENTITY, "invalid_component", "component model async"),
        ("huge", vec![0u8; 2 << 20], StatusCode::PAYLOAD_TOO_LARGE, "too_large", "cap"),
        (
            "memories",
            common::wat_matcher(1, 2, true),
            StatusCode::UNPROCESSABLE_ENTITY,
            "over_limits",
            "3 Wasm linear memories, which exceeds the configured maximum of 2",
        ),
        (
            "instances",
            common::wat_matcher(1, 40, false),
            StatusCode::UNPROCESSABLE_ENTITY,
            "over_limits",
            "41 core module instances, which exceeds the configured maximum of 32",
        ),
        (
            "info-trap",
            guest(matchbox::testing::MISBEHAVE_INFO_TRAP_WASM),
            StatusCode::UNPROCESSABLE_ENTITY,
            "info_failed",
            "trap",
        ),
        (
            "info-loop",
            guest(matchbox::testing::MISBEHAVE_INFO_LOOP_WASM),
            StatusCode::UNPROCESSABLE_ENTITY,
            "info_failed",
            "deadline",
        ),
        (
            "info-nonsense",
            guest(matchbox::testing::MISBEHAVE_INFO_NONSENSE_WASM),
            StatusCode::UNPROCESSABLE_ENTITY,
            "info_invalid",
            "name is empty",
        ),
        ("Bad/Name", misbehave(), StatusCode::BAD_REQUEST, "invalid_matcher_name", "not a valid matcher name"),
        ("skills", misbehave(), StatusCode::CONFLICT, "read_only", "built-in"),
    ];
    for (name, bytes, status, code, message) in cases {
        let uri_name = name.replace('/', "%2F");
        let (got, body) = upload(&app, &uri_name, bytes).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{name}: expected '{message}' in '{text}'");
        assert_eq!(names(&app).await, before, "{name} changed the registry");
    }
    assert!(std::fs::read_dir(dirs.path().join("data/matchers")).unwrap().next().is_none(), "nothing was stored");
    assert_eq!(app.live_instances().get(), 0);
}

/// A tenant (here the implicit one) may keep `--max-uploads` matchers; a
/// new name past it is refused, replacing one it has is not, and removing
/// one makes room.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_held_to_their_quota() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |c| c.max_uploads = 2).await;
    assert_eq!(upload(&app, "one", misbehave()).await.0, StatusCode::CREATED);
    assert_eq!(upload(&app, "two", common::wat_matcher(1, 0, false)).await.0, StatusCode::CREATED);
    let (status, body) = upload(&app, "three", misbehave()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("upload_quota_exceeded"))
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("has 2 uploaded matchers, its quota"), "{body}");
    assert_eq!(upload(&app, "two", misbehave()).await.0, StatusCode::OK, "replacing is not a new upload");
    let (status, _) = call(&app, Method::DELETE, "/matchers/one", Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(upload(&app, "three", misbehave()).await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_then_use_then_remove() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |_| {}).await;
    let (status, body) = upload(&app, "mine", misbehave()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "mine");
    assert_eq!(body["version"], "0.1.0");
    assert_eq!(body["source"], "uploaded");
    assert_eq!(body["builtin"], false);
    assert_eq!(body["digest"], matchbox::registry::digest(&misbehave()));

    let (status, task) = submit(&app, "mine", "honest", "30s").await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["matcher"], "mine");

    let (status, _) = upload(&app, "mine", misbehave()).await;
    assert_eq!(status, StatusCode::OK, "the same bytes again change nothing");

    let (status, _) = call(&app, Method::DELETE, "/matchers/mine", Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = submit(&app, "mine", "honest", "30s").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = call(&app, Method::DELETE, "/matchers/mine", Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(&app, Method::DELETE, "/matchers/text", Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_matcher_does_not_disturb_jobs_running_on_the_old_one() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |_| {}).await;
    upload(&app, "swap", misbehave()).await;
    let old_digest = matchbox::registry::digest(&misbehave());

    // A job that takes a while on the old component...
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { submit(&app, "swap", "slow", "30s").await })
    };
    tokio::time::timeout(BOUND, app.live_instances().wait_for(|n| n == 1)).await.unwrap();
    // ...while the name is replaced by another component.
    let skills = matchbox::registry::BUILTINS[0].1.to_vec();
    let (status, body) = upload(&app, "swap", skills.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["digest"], matchbox::registry::digest(&skills));

    let (status, old) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{old}");
    assert_eq!(old["status"], "completed", "{old}");
    assert_eq!(old["result"]["rankings"][0]["reasons"][0], "honest answer", "finished on the old component");

    let (_, new) = submit(&app, "swap", "ada", "30s").await;
    assert_eq!(new["result"]["rankings"][0]["reasons"][0], "1/1 required skills", "new jobs run the new one");

    // Pinning: the old digest no longer names what 'swap' is.
    let (status, body) = submit(&app, &format!("swap@{old_digest}"), "ada", "30s").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("is not sha256:"), "{body}");
    let (status, body) = submit(&app, &format!("swap@{}", matchbox::registry::digest(&skills)), "ada", "30s").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::timeout(BOUND, app.live_instances().wait_for_zero()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_survive_a_restart_and_load_from_the_cache_without_compiling() {
    let dirs = tempfile::tempdir().unwrap();
    let digest = {
        let app = service(&dirs, |_| {}).await;
        let (status, body) = upload(&app, "kept", misbehave()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            app.load_stats().compiled.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "two built-ins and the upload"
        );
        body["digest"].as_str().unwrap().to_string()
    };

    let app = service(&dirs, |_| {}).await;
    let kept =
        app.shared_matchers().into_iter().find(|m| m.name == "kept").expect("the upload is back after a restart");
    assert_eq!(kept.digest, digest);
    assert_eq!(kept.source, Source::Uploaded);
    let stats = app.load_stats();
    assert_eq!(stats.compiled.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing compiled on the second start");
    assert_eq!(stats.cache_hits.load(std::sync::atomic::Ordering::Relaxed), 3);
    let (status, task) = submit(&app, "kept", "honest", "30s").await;
    assert_eq!(status, StatusCode::OK, "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_truncated_cache_file_is_recompiled_never_trusted() {
    use std::sync::atomic::Ordering::Relaxed;
    let dirs = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let config = RegistryConfig { cache_dir: Some(dirs.path().join("cache")), ..RegistryConfig::default() };
    drop(MatcherRegistry::open(sandbox.clone(), config.clone()).await.unwrap());

    let mut files: Vec<_> = std::fs::read_dir(dirs.path().join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "one file per built-in");
    // Flip one byte of the compiled code in the first, truncate the second.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&files[0], bytes).unwrap();
    let len = std::fs::metadata(&files[1]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&files[1]).unwrap().set_len(len / 2).unwrap();

    let registry = MatcherRegistry::open(sandbox.clone(), config.clone()).await.unwrap();
    assert_eq!(registry.stats.cache_rejected.load(Relaxed), 2);
    assert_eq!(registry.stats.compiled.load(Relaxed), 2);
    assert_eq!(registry.stats.cache_hits.load(Relaxed), 0);
    assert_eq!(registry.names(), ["skills", "text"]);

    // The recompiled code was written back, whole.
    let registry = MatcherRegistry::open(sandbox, config).await.unwrap();
    assert_eq!(registry.stats.cache_hits.load(Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_matchers_directory_is_loaded_at_start_and_read_only() {
    let dirs = tempfile::tempdir().unwrap();
    let matchers = dirs.path().join("matchers");
    std::fs::create_dir_all(&matchers).unwrap();
    std::fs::write(matchers.join("house.wasm"), misbehave()).unwrap();
    let app = service(&dirs, |c| c.matchers_dir = Some(matchers.clone())).await;
    assert_eq!(app.shared_matchers().into_iter().find(|m| m.name == "house").unwrap().source, Source::Directory);
    let (status, _) = submit(&app, "house", "honest", "30s").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = upload(&app, "house", misbehave()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_while_a_component_compiles() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |_| {}).await;
    let uploads: Vec<_> = (0..4)
        .map(|i| {
            let app = app.clone();
            // Distinct bytes (a custom section) so each one really compiles.
            let mut bytes = misbehave();
            bytes.extend_from_slice(&[0, 2, 1, b'a' + i as u8]);
            tokio::spawn(async move { upload(&app, &format!("u{i}"), bytes).await })
        })
        .collect();
    let (status, _) = call(&app, Method::GET, "/healthz", Body::empty(), "application/json").await;
    assert_eq!(status, StatusCode::OK);
    for u in uploads {
        let (status, body) = u.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// An upload whose `info()` runs until its deadline (5 s) holds up no other
/// upload: the second one, started while the first's `info()` runs, is
/// registered before the first is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_holds_up_no_other() {
    let dirs = tempfile::tempdir().unwrap();
    let app = service(&dirs, |_| {}).await;
    let slow = tokio::spawn({
        let app = app.clone();
        async move { upload(&app, "slow", guest(matchbox::testing::MISBEHAVE_INFO_LOOP_WASM)).await }
    });
    tokio::time::timeout(BOUND, app.live_instances().wait_for(|n| n == 1)).await.unwrap();
    let (status, body) = upload(&app, "quick", misbehave()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!slow.is_finished(), "the slow upload was still in its info() when the quick one was registered");
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("info_failed")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_file_from_another_engine_is_recompiled_never_trusted() {
    use std::sync::atomic::Ordering::Relaxed;
    let dirs = tempfile::tempdir().unwrap();
    let cache_dir = dirs.path().join("cache");
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());

    // Code compiled by an engine with other settings, checksummed correctly
    // and put under the name this engine would look for.
    let mut other = wasmtime::Config::new();
    other.epoch_interruption(false).consume_fuel(true);
    let other = wasmtime::Engine::new(&other).unwrap();
    let skills = matchbox::registry::BUILTINS[0].1;
    let digest = matchbox::registry::digest(skills);
    let foreign = wasmtime::component::Component::new(&other, skills).unwrap();
    let other_cache = matchbox::registry::cache::CompiledCache::open(&dirs.path().join("other"), &other).unwrap();
    other_cache.store(&digest, &foreign).unwrap();
    let ours = matchbox::registry::cache::CompiledCache::open(&cache_dir, sandbox.engine()).unwrap();
    std::fs::copy(other_cache.path(&digest), ours.path(&digest)).unwrap();

    let config = RegistryConfig { cache_dir: Some(cache_dir), ..RegistryConfig::default() };
    let registry = MatcherRegistry::open(sandbox.clone(), config).await.unwrap();
    assert_eq!(registry.stats.cache_rejected.load(Relaxed), 1, "the foreign file was refused");
    assert_eq!(registry.stats.compiled.load(Relaxed), 2);
    let skills = registry.get("skills").unwrap();
    let report = sandbox
        .rank(
            &skills.pre,
            &matchbox::testing::sample_input(10),
            &matchbox::runtime::JobLimits::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    assert!(report.outcome.is_ok());
}

/// A component another host shares that cannot load here (its memory is
/// over this host's cap) costs one attempt: the next job for it is refused
/// as naming an unknown matcher without loading it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_component_that_fails_here_is_tried_once() {
    let prefix = format!("matchbox-test-{}", uuid_v7_now());
    let on_redis = |c: &mut Config| {
        c.store = "redis://127.0.0.1:6379".parse().unwrap();
        c.redis_prefix = prefix.clone();
    };
    let (dirs_a, dirs_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = service(&dirs_a, on_redis).await;
    let b = service(&dirs_b, |c| {
        on_redis(c);
        c.max_memory = 4 << 20;
    })
    .await;
    // 100 pages: 6.25 MiB, within a's cap and over b's.
    assert_eq!(upload(&a, "wide", common::wat_matcher(100, 0, false)).await.0, StatusCode::CREATED);
    let loads = |app: &Arc<Matchbox>| app.load_stats().failed.load(std::sync::atomic::Ordering::Relaxed);
    let before = loads(&b);
    let (status, body) = submit(&b, "wide", "honest", "1s").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_matcher")));
    assert_eq!(loads(&b), before + 1, "the first job tried to load it, and failed");
    let (status, _) = submit(&b, "wide", "honest", "1s").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(loads(&b), before + 1, "the second job did not try again");
}

fn uuid_v7_now() -> String {
    matchbox::tasks::Clock::new().new_task_id().simple().to_string()
}
