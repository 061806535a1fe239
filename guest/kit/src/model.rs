//! The records of `matchbox:matcher/types`, as plain Rust types.
//!
//! Field for field the same as the WIT records, so converting from the
//! generated bindings moves strings and vectors instead of copying them.

/// A skill the candidate has, with a proficiency weight in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    pub name: String,
    pub weight: f32,
}

/// The person being matched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Candidate {
    pub id: String,
    pub skills: Vec<Skill>,
    pub years_experience: f32,
    pub location: Option<String>,
    pub remote_ok: bool,
    pub desired_salary: Option<u32>,
    pub summary: String,
}

/// One job posting to score against the candidate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Posting {
    pub id: String,
    pub title: String,
    pub description: String,
    pub required_skills: Vec<String>,
    pub preferred_skills: Vec<String>,
    pub min_years: f32,
    pub location: Option<String>,
    pub remote: bool,
    pub salary_min: Option<u32>,
    pub salary_max: Option<u32>,
}

/// How many results the caller wants and the lowest score it accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub top_k: u32,
    pub min_score: f32,
}

/// One scored posting; score is in [0, 1], reasons explain it to a person.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub posting_id: String,
    pub score: f32,
    pub reasons: Vec<String>,
}

/// Why a matcher refused to rank: the caller's fault or its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchError {
    InvalidInput(String),
    Internal(String),
}

/// What a matcher says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}
