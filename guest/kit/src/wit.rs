//! The WIT export layer: generated bindings for `matchbox:matcher@0.1.0` and
//! the moves between them and [`crate::model`]. Only compiled for wasm.

use crate::model;

#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "matcher",
        pub_export_macro: true,
        default_bindings_module: "matchbox_guest_kit::wit::bindings",
    });
}

use bindings::matchbox::matcher::log::{self as wit_log, Level as WitLevel};

pub(crate) fn log(level: crate::Level, message: &str) {
    let level = match level {
        crate::Level::Debug => WitLevel::Debug,
        crate::Level::Info => WitLevel::Info,
        crate::Level::Warn => WitLevel::Warn,
        crate::Level::Error => WitLevel::Error,
    };
    wit_log::log(level, message);
}

pub fn info_to_wit(info: model::MatcherInfo) -> bindings::MatcherInfo {
    bindings::MatcherInfo { name: info.name, version: info.version, description: info.description }
}

/// Moves the WIT arguments into plain types, calls `M::rank`, and moves the
/// answer back.
pub fn rank_via<M: crate::Matcher>(
    candidate: bindings::Candidate,
    postings: Vec<bindings::Posting>,
    options: bindings::Options,
) -> Result<Vec<bindings::Ranking>, bindings::MatchError> {
    let candidate = model::Candidate {
        id: candidate.id,
        skills: candidate.skills.into_iter().map(|s| model::Skill { name: s.name, weight: s.weight }).collect(),
        years_experience: candidate.years_experience,
        location: candidate.location,
        remote_ok: candidate.remote_ok,
        desired_salary: candidate.desired_salary,
        summary: candidate.summary,
    };
    let postings = postings
        .into_iter()
        .map(|p| model::Posting {
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
        })
        .collect();
    let options = model::Options { top_k: options.top_k, min_score: options.min_score };
    match M::rank(candidate, postings, options) {
        Ok(rankings) => Ok(rankings
            .into_iter()
            .map(|r| bindings::Ranking { posting_id: r.posting_id, score: r.score, reasons: r.reasons })
            .collect()),
        Err(model::MatchError::InvalidInput(m)) => Err(bindings::MatchError::InvalidInput(m)),
        Err(model::MatchError::Internal(m)) => Err(bindings::MatchError::Internal(m)),
    }
}
