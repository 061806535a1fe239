//! Request and response bodies, and the checks that turn a request into a
//! job. JSON field names are the WIT field names in snake_case.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::ApiError;
use crate::registry::MatcherRef;
use crate::runtime::{Candidate, JobInput, Options, Posting, Skill};
use crate::service::CallbackRequest;
use crate::tasks::{TaskId, TaskStatus};

/// Caps on one request's content. Counts and lengths past a cap answer 413,
/// values out of range 422; either way the message names the field and cap.
#[derive(Debug, Clone)]
pub struct Caps {
    pub max_postings: usize,
}

pub const MAX_ID_BYTES: usize = 256;
/// Skill names, titles, locations.
pub const MAX_NAME_BYTES: usize = 1024;
/// Summaries and descriptions.
pub const MAX_TEXT_BYTES: usize = 64 << 10;
/// Skills of a candidate; required and preferred skills of a posting.
pub const MAX_LIST_ITEMS: usize = 256;
pub const MAX_TOP_K: u32 = 1000;
pub const DEFAULT_TOP_K: u32 = 10;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    /// A matcher name; the default matcher when absent.
    #[serde(default)]
    pub matcher: Option<String>,
    pub candidate: CandidateIn,
    pub postings: Vec<PostingIn>,
    #[serde(default)]
    pub options: OptionsIn,
    /// Where to POST the task once its job ends (completed, failed or
    /// cancelled), signed as Standard Webhooks describes.
    #[serde(default)]
    pub callback: Option<CallbackIn>,
}

/// A job's completion webhook.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackIn {
    /// An http or https URL the host's callback rules (`--callback-allow`)
    /// allow; by default only public addresses.
    pub url: String,
    /// Delete the task as soon as its end is delivered.
    #[serde(default)]
    pub delete_after_delivery: bool,
}

impl From<CallbackIn> for CallbackRequest {
    fn from(c: CallbackIn) -> Self {
        CallbackRequest { url: c.url, delete_after_delivery: c.delete_after_delivery }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkillIn {
    pub name: String,
    /// The candidate's proficiency in [0, 1]; a skill without one is held
    /// in full (1.0), the one field whose default is not empty or zero.
    #[serde(default = "one")]
    #[schema(default = 1.0)]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateIn {
    pub id: String,
    #[serde(default)]
    pub skills: Vec<SkillIn>,
    #[serde(default)]
    pub years_experience: f32,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub remote_ok: bool,
    #[serde(default)]
    pub desired_salary: Option<u32>,
    #[serde(default)]
    pub summary: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostingIn {
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub required_skills: Vec<String>,
    #[serde(default)]
    pub preferred_skills: Vec<String>,
    #[serde(default)]
    pub min_years: f32,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub remote: bool,
    #[serde(default)]
    pub salary_min: Option<u32>,
    #[serde(default)]
    pub salary_max: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionsIn {
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    #[serde(default)]
    pub min_score: f32,
}

fn default_top_k() -> u32 {
    DEFAULT_TOP_K
}

impl Default for OptionsIn {
    fn default() -> Self {
        OptionsIn { top_k: DEFAULT_TOP_K, min_score: 0.0 }
    }
}

/// The answer to an accepted submission (202).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub matcher: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

impl Accepted {
    pub fn of(task: crate::tasks::Task) -> Self {
        Accepted {
            task_id: task.task_id,
            status: task.status,
            matcher: task.matcher,
            created_at: task.created_at,
            expires_at: task.expires_at,
        }
    }
}

/// `POST /jobs/batch`: jobs as `POST /jobs/match` takes them, each its own
/// task, admitted together or not at all.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub jobs: Vec<MatchRequest>,
}

/// The answer to an accepted batch (202): its tasks, in the order of its
/// jobs.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    pub tasks: Vec<Accepted>,
}

/// The header a client retries a submission with, safely.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The key of an `Idempotency-Key` header: 1 to 255 visible ASCII
/// characters, as a Structured Fields string (`"…"`, as the IETF draft
/// writes it) or bare (as most clients send it).
pub fn idempotency_key(value: &axum::http::HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters, quoted or not \
                 (e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\")"
            ),
        )
    };
    let raw = value.to_str().map_err(|_| bad())?.trim();
    let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains(['"', '\\']) => inner,
        Some(_) => return Err(bad()),
        None => raw,
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(key.to_string())
}

/// What an idempotency key stands for: the SHA-256 of the job as checked
/// (its matcher as named, its input and its callback), so that two bodies that differ
/// only in spacing or field order are the same submission.
pub fn fingerprint(matcher: Option<&MatcherRef>, input: &JobInput, callback: Option<&CallbackRequest>) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(matcher.map(|m| m.to_string()).unwrap_or_default());
    hash.update([0]);
    hash.update(serde_json::to_vec(input).expect("a job serialises"));
    if let Some(callback) = callback {
        hash.update([0]);
        hash.update(&callback.url);
        hash.update([u8::from(callback.delete_after_delivery)]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn too_large(field: &str, size: usize, unit: &str, cap: usize) -> ApiError {
    ApiError::too_large(format!("{field} has {size} {unit}; the cap is {cap}"))
}

fn check_len(field: impl FnOnce() -> String, s: &str, cap: usize) -> Result<(), ApiError> {
    if s.len() > cap {
        return Err(too_large(&field(), s.len(), "bytes", cap));
    }
    Ok(())
}

fn check_items<T>(field: impl FnOnce() -> String, items: &[T], cap: usize) -> Result<(), ApiError> {
    if items.len() > cap {
        return Err(too_large(&field(), items.len(), "items", cap));
    }
    Ok(())
}

fn check_id(field: impl Fn() -> String, id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::invalid(format!("{} must not be empty", field())));
    }
    check_len(field, id, MAX_ID_BYTES)
}

fn check_range(field: impl FnOnce() -> String, value: f32, lo: f32, hi: f32) -> Result<(), ApiError> {
    if !(lo..=hi).contains(&value) {
        return Err(ApiError::invalid(format!("{} must be in [{lo}, {hi}], got {value}", field())));
    }
    Ok(())
}

impl MatchRequest {
    /// Checks every cap and range, and moves the request into a job's input
    /// and the matcher it names.
    pub fn into_job(self, caps: &Caps) -> Result<(Option<MatcherRef>, JobInput), ApiError> {
        let MatchRequest { matcher, candidate, postings, options, callback: _ } = self;
        let matcher = match matcher {
            Some(reference) => {
                check_id(|| "matcher".into(), &reference)?;
                Some(reference.parse::<MatcherRef>().map_err(crate::service::SubmitError::from)?)
            }
            None => None,
        };
        if options.top_k == 0 || options.top_k > MAX_TOP_K {
            return Err(ApiError::invalid(format!(
                "options.top_k must be between 1 and {MAX_TOP_K}, got {}",
                options.top_k
            )));
        }
        check_range(|| "options.min_score".into(), options.min_score, 0.0, 1.0)?;
        check_items(|| "postings".into(), &postings, caps.max_postings)?;
        if postings.is_empty() {
            return Err(ApiError::invalid("postings must not be empty"));
        }

        let c = candidate;
        check_id(|| "candidate.id".into(), &c.id)?;
        check_items(|| "candidate.skills".into(), &c.skills, MAX_LIST_ITEMS)?;
        for (i, s) in c.skills.iter().enumerate() {
            // A name, not an id: 1 KiB like the postings' skills.
            if s.name.trim().is_empty() {
                return Err(ApiError::invalid(format!("candidate.skills[{i}].name must not be empty")));
            }
            check_len(|| format!("candidate.skills[{i}].name"), &s.name, MAX_NAME_BYTES)?;
            check_range(|| format!("candidate.skills[{i}].weight"), s.weight, 0.0, 1.0)?;
        }
        check_range(|| "candidate.years_experience".into(), c.years_experience, 0.0, 100.0)?;
        if let Some(l) = &c.location {
            check_len(|| "candidate.location".into(), l, MAX_NAME_BYTES)?;
        }
        check_len(|| "candidate.summary".into(), &c.summary, MAX_TEXT_BYTES)?;
        let candidate = Candidate {
            id: c.id,
            skills: c.skills.into_iter().map(|s| Skill { name: s.name, weight: s.weight }).collect(),
            years_experience: c.years_experience,
            location: c.location,
            remote_ok: c.remote_ok,
            desired_salary: c.desired_salary,
            summary: c.summary,
        };

        let mut seen = HashSet::with_capacity(postings.len());
        for (i, p) in postings.iter().enumerate() {
            check_id(|| format!("postings[{i}].id"), &p.id)?;
            if !seen.insert(p.id.as_str()) {
                return Err(ApiError::invalid(format!("postings[{i}].id '{}' appears more than once", p.id)));
            }
        }
        drop(seen);
        let mut checked = Vec::with_capacity(postings.len());
        for (i, p) in postings.into_iter().enumerate() {
            check_len(|| format!("postings[{i}].title"), &p.title, MAX_NAME_BYTES)?;
            check_len(|| format!("postings[{i}].description"), &p.description, MAX_TEXT_BYTES)?;
            for (list, skills) in [("required_skills", &p.required_skills), ("preferred_skills", &p.preferred_skills)] {
                check_items(|| format!("postings[{i}].{list}"), skills, MAX_LIST_ITEMS)?;
                for (j, s) in skills.iter().enumerate() {
                    check_len(|| format!("postings[{i}].{list}[{j}]"), s, MAX_NAME_BYTES)?;
                }
            }
            check_range(|| format!("postings[{i}].min_years"), p.min_years, 0.0, 100.0)?;
            if let Some(l) = &p.location {
                check_len(|| format!("postings[{i}].location"), l, MAX_NAME_BYTES)?;
            }
            if let (Some(lo), Some(hi)) = (p.salary_min, p.salary_max)
                && lo > hi
            {
                return Err(ApiError::invalid(format!("postings[{i}].salary_min ({lo}) is above salary_max ({hi})")));
            }
            checked.push(Posting {
                id: p.id,
                title: p.title,
                description: p.description,
                required_skills: p.required_skills,
                preferred_skills: p.preferred_skills,
                min_years: p.min_years,
                location: p.location,
                remote: p.remote,
                salary_min: p.salary_min,
                salary_max: p.salary_max,
            });
        }
        let options = Options { top_k: options.top_k, min_score: options.min_score };
        Ok((matcher, JobInput { candidate, postings: checked, options }))
    }
}

/// How a `?wait=` is written, for the document: a number and a unit, one or
/// more (`2s`, `500ms`, `1m 30s`); what `parse_wait` reads is wider.
const WAIT_PATTERN: &str = "^([0-9]{1,9} ?(ns|us|ms|s|m|h) ?){1,4}$";
/// A matcher reference: a name, or a name pinned to a digest.
const MATCHER_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}(@sha256:[0-9a-f]{64})?$";
/// Not empty once trimmed: an id or a name must hold something.
const NOT_BLANK: &str = "\\S";

/// States in the OpenAPI document the rules [`MatchRequest::into_job`] and
/// the routes enforce, from the same constants and the host's caps, so that
/// generated clients and document-driven fuzzers send what the API accepts:
/// string lengths, list lengths, numeric ranges, task ids as UUIDs, the
/// `?wait=` syntax, the upload's size cap. The two rules JSON Schema cannot
/// state (posting ids unique within a job; `salary_min` at most
/// `salary_max`) are in the fields' descriptions.
pub fn state_rules(doc: &mut serde_json::Value, limits: &crate::service::HttpLimits) {
    use serde_json::json;
    let crate::service::HttpLimits { max_postings, max_wait, max_component_size, max_batch, .. } = *limits;
    let id = json!({"minLength": 1, "maxLength": MAX_ID_BYTES, "pattern": NOT_BLANK});
    let name = json!({"minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": NOT_BLANK});
    let short = json!({"maxLength": MAX_NAME_BYTES});
    let text = json!({"maxLength": MAX_TEXT_BYTES});
    let range = |lo: f64, hi: f64| json!({"minimum": lo, "maximum": hi});
    let salary = json!({"minimum": 0, "maximum": u32::MAX});
    let skills = json!({"maxItems": MAX_LIST_ITEMS, "items": {"maxLength": MAX_NAME_BYTES}});
    let schemas = &mut doc["components"]["schemas"];
    let rules = [
        (
            "MatchRequest",
            "matcher",
            json!({"maxLength": MAX_ID_BYTES, "pattern": MATCHER_PATTERN, "examples": ["skills", "text"]}),
        ),
        (
            "MatchRequest",
            "postings",
            json!({
                "minItems": 1,
                "maxItems": max_postings,
                "description": "The postings to rank, each with an id of its own: two postings with one id are refused (422).",
            }),
        ),
        ("CandidateIn", "id", id.clone()),
        ("CandidateIn", "skills", json!({"maxItems": MAX_LIST_ITEMS})),
        ("CandidateIn", "years_experience", range(0.0, 100.0)),
        ("CandidateIn", "location", short.clone()),
        ("CandidateIn", "desired_salary", salary.clone()),
        ("CandidateIn", "summary", text.clone()),
        ("SkillIn", "name", name),
        ("SkillIn", "weight", range(0.0, 1.0)),
        ("PostingIn", "id", id),
        ("PostingIn", "title", short.clone()),
        ("PostingIn", "description", text),
        ("PostingIn", "required_skills", skills.clone()),
        ("PostingIn", "preferred_skills", skills),
        ("PostingIn", "min_years", range(0.0, 100.0)),
        ("PostingIn", "location", short),
        (
            "PostingIn",
            "salary_min",
            json!({"minimum": 0, "maximum": u32::MAX, "description": "At most salary_max, when both are given."}),
        ),
        ("PostingIn", "salary_max", salary),
        ("OptionsIn", "top_k", json!({"minimum": 1, "maximum": MAX_TOP_K})),
        ("OptionsIn", "min_score", range(0.0, 1.0)),
        ("BatchRequest", "jobs", json!({"minItems": 1, "maxItems": max_batch})),
        (
            "CallbackIn",
            "url",
            json!({"format": "uri", "minLength": 1, "maxLength": crate::webhooks::MAX_URL_BYTES,
                "pattern": "^https?://", "examples": ["https://hooks.example.com/matchbox"]}),
        ),
    ];
    for (schema, field, rule) in rules {
        // A field renamed without its rule here fails every test.
        debug_assert!(schemas[schema]["properties"][field].is_object(), "no field {schema}.{field} in the document");
        merge(&mut schemas[schema]["properties"][field], rule);
    }

    // Examples a client may send here: none over this host's cap.
    let examples: Vec<String> = [500, 2_000, 30_000]
        .into_iter()
        .map(std::time::Duration::from_millis)
        .filter(|d| *d <= max_wait)
        .chain([max_wait])
        .map(|d| humantime::format_duration(d).to_string())
        .collect();
    let wait = json!({
        "pattern": WAIT_PATTERN,
        "examples": examples,
        "description": format!("A duration: a number and a unit (ms, s, m, h), at most {} on this host.", humantime::format_duration(max_wait)),
    });
    let task_id = json!({"format": "uuid"});
    for (path, method, param, rule) in [
        ("/jobs/match", "post", "wait", &wait),
        ("/tasks/{id}", "get", "wait", &wait),
        ("/tasks/{id}", "get", "id", &task_id),
        ("/tasks/{id}", "delete", "id", &task_id),
    ] {
        let parameters = doc["paths"][path][method]["parameters"].as_array_mut().into_iter().flatten();
        for parameter in parameters.filter(|p| p["name"] == param) {
            merge(&mut parameter["schema"], rule.clone());
        }
    }
    for method in ["get", "put", "delete"] {
        let parameters = doc["paths"]["/matchers/{name}"][method]["parameters"].as_array_mut().into_iter().flatten();
        for parameter in parameters.filter(|p| p["name"] == "name") {
            let rule =
                json!({"pattern": "^[a-z0-9][a-z0-9._-]{0,63}$", "maxLength": crate::support::names::MAX_NAME_LEN});
            merge(&mut parameter["schema"], rule);
        }
    }
    let upload = &mut doc["paths"]["/matchers/{name}"]["put"]["requestBody"];
    merge(
        &mut upload["content"]["application/wasm"]["schema"],
        json!({"maxLength": max_component_size, "description": format!("The component's bytes, at most {max_component_size} (--max-component-size).")}),
    );
}

/// Adds `rule`'s keys to the schema `target` (an object, or `null` where a
/// schema is missing), into the schemas it holds (`items`) key by key; a
/// description is appended to one already there.
fn merge(target: &mut serde_json::Value, rule: serde_json::Value) {
    let serde_json::Value::Object(rule) = rule else { return };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    let target = target.as_object_mut().expect("made an object");
    for (key, value) in rule {
        match (key.as_str(), target.get_mut(&key)) {
            ("description", Some(serde_json::Value::String(old))) => {
                *old = format!("{old} {}", value.as_str().unwrap_or_default());
            }
            (_, Some(held @ serde_json::Value::Object(_))) if value.is_object() => merge(held, value),
            _ => {
                target.insert(key, value);
            }
        }
    }
}
