//! Input checks every matcher applies before it scores anything.
//!
//! The host caps sizes and rejects malformed JSON, but a matcher must not
//! trust its caller: nonsense numbers become an `invalid-input` error here
//! instead of a NaN score or a panic later.

use std::collections::HashSet;

use crate::model::{Candidate, MatchError, Options, Posting};

fn invalid(message: String) -> MatchError {
    MatchError::InvalidInput(message)
}

/// Rejects inputs no matcher can score sensibly.
pub fn inputs(candidate: &Candidate, postings: &[Posting], options: &Options) -> Result<(), MatchError> {
    if candidate.id.trim().is_empty() {
        return Err(invalid("candidate.id is empty".into()));
    }
    if !candidate.years_experience.is_finite() || candidate.years_experience < 0.0 {
        return Err(invalid(format!(
            "candidate.years_experience must be a finite number >= 0, got {}",
            candidate.years_experience
        )));
    }
    for skill in &candidate.skills {
        if skill.name.trim().is_empty() {
            return Err(invalid("candidate.skills has a skill with an empty name".into()));
        }
        if !(0.0..=1.0).contains(&skill.weight) {
            return Err(invalid(format!(
                "candidate skill '{}' has weight {}, expected a number in [0, 1]",
                skill.name, skill.weight
            )));
        }
    }
    if options.top_k == 0 {
        return Err(invalid("options.top_k must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&options.min_score) {
        return Err(invalid(format!("options.min_score must be in [0, 1], got {}", options.min_score)));
    }
    let mut seen = HashSet::with_capacity(postings.len());
    for posting in postings {
        if posting.id.trim().is_empty() {
            return Err(invalid("a posting has an empty id".into()));
        }
        if !seen.insert(posting.id.as_str()) {
            return Err(invalid(format!("posting id '{}' appears twice", posting.id)));
        }
        if !posting.min_years.is_finite() || posting.min_years < 0.0 {
            return Err(invalid(format!(
                "posting '{}': min_years must be a finite number >= 0, got {}",
                posting.id, posting.min_years
            )));
        }
        if let (Some(min), Some(max)) = (posting.salary_min, posting.salary_max)
            && min > max
        {
            return Err(invalid(format!("posting '{}': salary_min {min} is above salary_max {max}", posting.id)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Skill;

    fn candidate() -> Candidate {
        Candidate { id: "c1".into(), ..Default::default() }
    }

    fn options() -> Options {
        Options { top_k: 10, min_score: 0.0 }
    }

    fn posting(id: &str) -> Posting {
        Posting { id: id.into(), ..Default::default() }
    }

    #[test]
    fn accepts_plain_input() {
        assert_eq!(inputs(&candidate(), &[posting("a"), posting("b")], &options()), Ok(()));
    }

    #[test]
    fn rejects_nonsense() {
        let mut c = candidate();
        c.years_experience = f32::NAN;
        assert!(inputs(&c, &[], &options()).is_err());

        let mut c = candidate();
        c.skills.push(Skill { name: "rust".into(), weight: 2.0 });
        let err = inputs(&c, &[], &options()).unwrap_err();
        assert!(matches!(err, MatchError::InvalidInput(m) if m.contains("weight 2")));

        let err = inputs(&candidate(), &[posting("a"), posting("a")], &options()).unwrap_err();
        assert!(matches!(err, MatchError::InvalidInput(m) if m.contains("twice")));

        let bad_k = Options { top_k: 0, min_score: 0.0 };
        assert!(inputs(&candidate(), &[], &bad_k).is_err());

        let bad_min = Options { top_k: 1, min_score: f32::NAN };
        assert!(inputs(&candidate(), &[], &bad_min).is_err());

        let mut p = posting("a");
        p.salary_min = Some(10);
        p.salary_max = Some(5);
        assert!(inputs(&candidate(), &[p], &options()).is_err());
    }
}
