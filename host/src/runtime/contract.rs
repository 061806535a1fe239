//! Re-checks what a guest returned against the contract of `rank`.
//!
//! Nothing a guest says is trusted: a breach fails the guest's own task with
//! a reason that names the breach, and never reaches a client as a result.

use std::collections::HashSet;

use super::bindings::{Options, Posting, Ranking};
use super::limits::JobLimits;

pub fn check(rankings: &[Ranking], postings: &[Posting], options: &Options, limits: &JobLimits) -> Result<(), String> {
    if rankings.len() > options.top_k as usize {
        return Err(format!("returned {} rankings, more than top_k = {}", rankings.len(), options.top_k));
    }
    let submitted: HashSet<&str> = postings.iter().map(|p| p.id.as_str()).collect();
    let mut seen = HashSet::with_capacity(rankings.len());
    let mut previous = f32::INFINITY;
    for (i, r) in rankings.iter().enumerate() {
        let id = &r.posting_id;
        if !r.score.is_finite() || !(0.0..=1.0).contains(&r.score) {
            return Err(format!("ranking {i} ('{}') has score {}, outside [0, 1]", truncate(id), r.score));
        }
        if r.score < options.min_score {
            return Err(format!(
                "ranking {i} ('{}') has score {} under min_score {}",
                truncate(id),
                r.score,
                options.min_score
            ));
        }
        if !submitted.contains(id.as_str()) {
            return Err(format!("ranking {i} names posting '{}', which was not submitted", truncate(id)));
        }
        if !seen.insert(id.as_str()) {
            return Err(format!("posting '{}' is ranked twice", truncate(id)));
        }
        if r.score > previous {
            return Err(format!(
                "rankings are not sorted best first (ranking {i} scores {} after {previous})",
                r.score
            ));
        }
        previous = r.score;
        if r.reasons.len() > limits.reasons_per_ranking {
            return Err(format!(
                "ranking {i} has {} reasons, more than the cap of {}",
                r.reasons.len(),
                limits.reasons_per_ranking
            ));
        }
        if let Some(long) = r.reasons.iter().find(|s| s.len() > limits.reason_bytes) {
            return Err(format!(
                "ranking {i} has a reason of {} bytes, more than the cap of {}",
                long.len(),
                limits.reason_bytes
            ));
        }
    }
    Ok(())
}

/// A guest-chosen string, shortened for an error message.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(id: &str) -> Posting {
        Posting {
            id: id.into(),
            title: String::new(),
            description: String::new(),
            required_skills: vec![],
            preferred_skills: vec![],
            min_years: 0.0,
            location: None,
            remote: false,
            salary_min: None,
            salary_max: None,
        }
    }

    fn r(id: &str, score: f32) -> Ranking {
        Ranking { posting_id: id.into(), score, reasons: vec![] }
    }

    fn run(rankings: &[Ranking]) -> Result<(), String> {
        let postings = [posting("a"), posting("b"), posting("c")];
        check(rankings, &postings, &Options { top_k: 2, min_score: 0.1 }, &JobLimits::default())
    }

    #[test]
    fn accepts_an_honest_answer() {
        assert_eq!(run(&[r("b", 0.9), r("a", 0.9)]), Ok(()));
        assert_eq!(run(&[]), Ok(()));
    }

    #[test]
    fn names_each_breach() {
        assert!(run(&[r("a", 7.5)]).unwrap_err().contains("outside [0, 1]"));
        assert!(run(&[r("a", f32::NAN)]).unwrap_err().contains("outside [0, 1]"));
        assert!(run(&[r("a", 0.05)]).unwrap_err().contains("under min_score"));
        assert!(run(&[r("zz", 0.5)]).unwrap_err().contains("not submitted"));
        assert!(run(&[r("a", 0.5), r("a", 0.4)]).unwrap_err().contains("twice"));
        assert!(run(&[r("a", 0.4), r("b", 0.5)]).unwrap_err().contains("not sorted"));
        assert!(run(&[r("a", 0.5), r("b", 0.4), r("c", 0.3)]).unwrap_err().contains("more than top_k"));
        let long = Ranking { posting_id: "a".into(), score: 0.5, reasons: vec!["x".repeat(5000)] };
        assert!(run(&[long]).unwrap_err().contains("5000 bytes"));
    }
}
