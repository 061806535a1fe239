//! What the in-process API tests share: sending a request through the
//! router (no socket) and reading the JSON reply.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// How long any one wait in a test may take before the test fails.
pub const BOUND: Duration = Duration::from_secs(60);

pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

/// Sends `request` through `router` and reads the reply's JSON (`Null` for
/// an empty body, a string for a body that is not JSON).
pub async fn send(router: Router, request: Request<Body>) -> Reply {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply { status, headers, body }
}

/// A hand-written component that implements the `matcher` world (`info()`
/// answers `wide 0.1.0`; `rank` traps), with a main memory of `pages` and
/// `extra` more core instances, each of a module with a memory of `pages`
/// when `extra_memories`, or with no memory.
pub fn wat_matcher(pages: u32, extra: usize, extra_memories: bool) -> Vec<u8> {
    let extra_module = if extra_memories { format!("(memory {pages})") } else { String::new() };
    let extras: String = (0..extra)
        .map(|i| format!("(core module $extra{i} {extra_module}) (core instance (instantiate $extra{i}))\n"))
        .collect();
    let text = format!(
        r#"(component
  (type $skill' (record (field "name" string) (field "weight" f32)))
  (export $skill "skill" (type $skill'))
  (type $candidate' (record (field "id" string) (field "skills" (list $skill)) (field "years-experience" f32)
    (field "location" (option string)) (field "remote-ok" bool) (field "desired-salary" (option u32))
    (field "summary" string)))
  (export $candidate "candidate" (type $candidate'))
  (type $posting' (record (field "id" string) (field "title" string) (field "description" string)
    (field "required-skills" (list string)) (field "preferred-skills" (list string)) (field "min-years" f32)
    (field "location" (option string)) (field "remote" bool) (field "salary-min" (option u32))
    (field "salary-max" (option u32))))
  (export $posting "posting" (type $posting'))
  (type $options' (record (field "top-k" u32) (field "min-score" f32)))
  (export $options "options" (type $options'))
  (type $ranking' (record (field "posting-id" string) (field "score" f32) (field "reasons" (list string))))
  (export $ranking "ranking" (type $ranking'))
  (type $match-error' (variant (case "invalid-input" string) (case "internal" string)))
  (export $match-error "match-error" (type $match-error'))
  (type $matcher-info' (record (field "name" string) (field "version" string) (field "description" string)))
  (export $matcher-info "matcher-info" (type $matcher-info'))
  (core module $main
    (memory (export "memory") {pages})
    (global $next (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    (data (i32.const 1024) "\00\08\00\00\04\00\00\00\08\08\00\00\05\00\00\00\10\08\00\00\00\00\00\00")
    (data (i32.const 2048) "wide")
    (data (i32.const 2056) "0.1.0")
    (func (export "info") (result i32) (i32.const 1024))
    (func (export "rank") (param i32) (result i32) unreachable))
  (core instance $m (instantiate $main))
  {extras}
  (func (export "info") (result $matcher-info) (canon lift (core func $m "info") (memory (core memory $m "memory"))))
  (func (export "rank") (param "candidate" $candidate) (param "postings" (list $posting)) (param "options" $options)
    (result (result (list $ranking) (error $match-error)))
    (canon lift (core func $m "rank") (memory (core memory $m "memory")) (realloc (core func $m "realloc")))))"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}
