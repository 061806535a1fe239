//! The built-in matchers keep their own contract on every input the API
//! accepts: a property test over random requests at the API's caps (the
//! longest ids, names, locations, summaries and descriptions, the most
//! skills), each checked by the API's own validation, run through the real
//! sandbox and the real components, whose answer the host re-checks.

use std::sync::Arc;
use std::time::Duration;

use matchbox::api::types::{Caps, MAX_ID_BYTES, MAX_LIST_ITEMS, MAX_NAME_BYTES, MAX_TEXT_BYTES, MatchRequest};
use matchbox::registry::BUILTINS;
use matchbox::runtime::{FailureKind, JobLimits, Sandbox, SandboxConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestError, TestRunner};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A string of about `bytes` bytes of characters from `alphabet` (ASCII,
/// accented, CJK, emoji: one to four bytes each), never over `bytes`.
fn text(max: usize) -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec!['a', 'Z', ' ', '-', 'é', 'ß', '語', '🦀', ',', '.']);
    // Short, or filled to the cap: the caps are where the bugs were.
    let length = prop_oneof![0..24usize, Just(max)];
    (length, prop::collection::vec(alphabet, 1..8)).prop_map(move |(len, cycle)| {
        let mut s = String::new();
        for c in cycle.iter().cycle() {
            if s.len() + c.len_utf8() > len {
                break;
            }
            s.push(*c);
        }
        s
    })
}

fn non_empty(max: usize) -> impl Strategy<Value = String> {
    text(max).prop_map(|s| if s.trim().is_empty() { "x".to_string() } else { s })
}

fn list(max_items: usize) -> impl Strategy<Value = Vec<String>> {
    let items = prop_oneof![0..4usize, Just(max_items)];
    items.prop_flat_map(|n| prop::collection::vec(non_empty(MAX_NAME_BYTES), n))
}

fn request() -> impl Strategy<Value = Value> {
    let skill = (non_empty(MAX_NAME_BYTES), 0.0f32..=1.0)
        .prop_map(|(name, weight)| json!({"name": name, "weight": weight}))
        .boxed();
    let skills =
        prop_oneof![0..4usize, Just(MAX_LIST_ITEMS)].prop_flat_map(move |n| prop::collection::vec(skill.clone(), n));
    let candidate = (
        non_empty(MAX_ID_BYTES),
        skills,
        0.0f32..=100.0,
        prop::option::of(text(MAX_NAME_BYTES)),
        any::<bool>(),
        prop::option::of(any::<u32>()),
        text(MAX_TEXT_BYTES),
    )
        .prop_map(|(id, skills, years, location, remote_ok, salary, summary)| {
            json!({"id": id, "skills": skills, "years_experience": years, "location": location,
                   "remote_ok": remote_ok, "desired_salary": salary, "summary": summary})
        });
    let posting = (
        (non_empty(MAX_ID_BYTES), text(MAX_NAME_BYTES), text(MAX_TEXT_BYTES)),
        (list(MAX_LIST_ITEMS), list(MAX_LIST_ITEMS)),
        (0.0f32..=100.0, prop::option::of(text(MAX_NAME_BYTES)), any::<bool>()),
        (prop::option::of(any::<u32>()), prop::option::of(any::<u32>())),
    )
        .prop_map(|((id, title, description), (required, preferred), (min_years, location, remote), (lo, hi))| {
            let (lo, hi) = match (lo, hi) {
                (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
                other => other,
            };
            json!({"id": id, "title": title, "description": description, "required_skills": required,
                   "preferred_skills": preferred, "min_years": min_years, "location": location, "remote": remote,
                   "salary_min": lo, "salary_max": hi})
        });
    let postings = prop::collection::vec(posting, 1..6).prop_map(|mut postings| {
        // Posting ids must be unique; make them so, keeping their length.
        for (i, p) in postings.iter_mut().enumerate() {
            let id = p["id"].as_str().unwrap();
            let mut unique = format!("{i}-");
            unique.push_str(&id[..id.floor_char_boundary(MAX_ID_BYTES - unique.len())]);
            p["id"] = json!(unique);
        }
        postings
    });
    let options =
        (1u32..=1000, 0.0f32..=1.0).prop_map(|(top_k, min_score)| json!({"top_k": top_k, "min_score": min_score}));
    (candidate, postings, options).prop_map(
        |(candidate, postings, options)| json!({"candidate": candidate, "postings": postings, "options": options}),
    )
}

#[test]
fn built_in_matchers_answer_within_the_contract_for_every_accepted_request() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let matchers: Vec<_> = BUILTINS
        .iter()
        .map(|(name, bytes)| {
            let component = wasmtime::component::Component::new(sandbox.engine(), bytes).unwrap();
            (*name, sandbox.prepare(&component).unwrap())
        })
        .collect();
    // The host's default memory cap (`--max-memory`).
    let limits = JobLimits { memory: 256 << 20, deadline: Duration::from_secs(60), ..JobLimits::default() };
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
    let mut runner = TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let outcome = runner.run(&request(), |body| {
        let text = body.to_string();
        prop_assume!(text.len() <= 8 << 20, "over the default --max-body");
        let request: MatchRequest = serde_json::from_str(&text).expect("the generator writes the API's shape");
        let (_, input) = match request.into_job(&Caps { max_postings: 10_000 }) {
            Ok(job) => job,
            Err(refused) => panic!("the API refused a request the generator meant to be valid: {refused:?}"),
        };
        for (name, pre) in &matchers {
            let report = rt.block_on(sandbox.rank(pre, &input, &limits, CancellationToken::new()));
            match &report.outcome {
                Ok(rankings) => prop_assert!(rankings.len() <= input.options.top_k as usize),
                Err(failure) => {
                    prop_assert_ne!(failure.kind, FailureKind::ContractViolation, "{}: {}", name, failure.message);
                    prop_assert!(false, "{} failed on an accepted request: {:?}", name, failure);
                }
            }
        }
        Ok(())
    });
    // The failing request can be megabytes: say why and how big, not what.
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, body)) => panic!("{why} (on a request of {} bytes)", body.to_string().len()),
        Err(TestError::Abort(why)) => panic!("{why}"),
    }
}
