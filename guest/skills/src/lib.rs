//! `skills`, matchbox's default matcher.
//!
//! A posting's score is a weighted blend of four fits, each in [0, 1]:
//!
//! | fit        | weight | what it measures |
//! | ---------- | ------ | ---------------- |
//! | required   | 0.55   | required skills the candidate has, by the candidate's proficiency weight |
//! | preferred  | 0.15   | the same for preferred skills |
//! | experience | 0.15   | 1 when the candidate meets `min_years`, falling linearly with the gap |
//! | location   | 0.10   | remote compatibility or the same location |
//! | salary     | 0.05   | whether the posting's range reaches the candidate's desired salary |
//!
//! A posting that lists no required (or preferred) skills gives that fit full
//! marks. Skill names are normalised (case, punctuation, common aliases such
//! as `js`/`javascript` and `k8s`/`kubernetes`) before they are compared.
//!
//! The scoring is plain Rust, unit-tested natively; the WIT export layer is
//! [`matchbox_guest_kit::export_matcher!`] at the bottom of this file.

use std::collections::HashMap;

use matchbox_guest_kit::{Candidate, MatchError, Matcher, MatcherInfo, Options, Posting, Ranking, check, select};

mod normalize;

pub use normalize::skill_key;

const W_REQUIRED: f32 = 0.55;
const W_PREFERRED: f32 = 0.15;
const W_EXPERIENCE: f32 = 0.15;
const W_LOCATION: f32 = 0.10;
const W_SALARY: f32 = 0.05;

/// How many missing skills a reason names before it says "and N more".
const MAX_NAMED_MISSING: usize = 5;

/// The default matcher.
#[derive(Debug)]
pub struct Skills;

impl Matcher for Skills {
    fn info() -> MatcherInfo {
        MatcherInfo {
            name: "skills".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Weighted skill overlap with experience, location and salary fit.".into(),
        }
    }

    fn rank(candidate: Candidate, postings: Vec<Posting>, options: Options) -> Result<Vec<Ranking>, MatchError> {
        check::inputs(&candidate, &postings, &options)?;
        if candidate.skills.is_empty() {
            // Logged only when it matters: a line per job would cost every
            // job a few microseconds of crossing into the host.
            matchbox_guest_kit::log(
                matchbox_guest_kit::Level::Info,
                "the candidate lists no skills: only postings that require none can score on skills",
            );
        }
        let profile = Profile::new(&candidate);
        let scored = postings.iter().map(|p| profile.score(p)).collect();
        Ok(select::best_first(scored, &options))
    }
}

/// The candidate, prepared once for scoring many postings.
struct Profile<'a> {
    candidate: &'a Candidate,
    /// Normalised skill name to the best weight the candidate gave it.
    skills: HashMap<String, f32>,
    location: Option<String>,
}

impl<'a> Profile<'a> {
    fn new(candidate: &'a Candidate) -> Self {
        let mut skills = HashMap::with_capacity(candidate.skills.len());
        for skill in &candidate.skills {
            let weight = skills.entry(skill_key(&skill.name)).or_insert(0.0_f32);
            *weight = weight.max(skill.weight);
        }
        let location = candidate.location.as_deref().map(normalize::place);
        Profile { candidate, skills, location }
    }

    fn score(&self, posting: &Posting) -> Ranking {
        let mut reasons = Vec::with_capacity(5);

        let required = self.overlap(&posting.required_skills);
        if let Some(o) = &required {
            reasons.push(o.describe("required"));
        }
        let preferred = self.overlap(&posting.preferred_skills);
        if let Some(o) = &preferred {
            reasons.push(o.describe("preferred"));
        }
        let required_fit = required.as_ref().map_or(1.0, |o| o.fit);
        let preferred_fit = preferred.as_ref().map_or(1.0, |o| o.fit);

        let experience_fit = self.experience(posting, &mut reasons);
        let location_fit = self.location(posting, &mut reasons);
        let salary_fit = self.salary(posting, &mut reasons);

        let score = W_REQUIRED * required_fit
            + W_PREFERRED * preferred_fit
            + W_EXPERIENCE * experience_fit
            + W_LOCATION * location_fit
            + W_SALARY * salary_fit;
        Ranking { posting_id: posting.id.clone(), score, reasons }
    }

    fn overlap<'p>(&self, wanted: &'p [String]) -> Option<Overlap<'p>> {
        if wanted.is_empty() {
            return None;
        }
        let mut total = 0.0;
        let mut have = 0;
        let mut missing = Vec::new();
        for name in wanted {
            match self.skills.get(&skill_key(name)) {
                Some(&weight) => {
                    total += weight;
                    have += 1;
                }
                None => missing.push(name.as_str()),
            }
        }
        Some(Overlap { fit: total / wanted.len() as f32, have, of: wanted.len(), missing })
    }

    fn experience(&self, posting: &Posting, reasons: &mut Vec<String>) -> f32 {
        let have = self.candidate.years_experience;
        let need = posting.min_years;
        if need <= 0.0 || have >= need {
            if need > 0.0 {
                reasons.push(format!("meets {} years of experience", trim_float(need)));
            }
            return 1.0;
        }
        let gap = need - have;
        reasons.push(format!("experience: {} years short of {}", trim_float(gap), trim_float(need)));
        (1.0 - gap / need).max(0.0)
    }

    fn location(&self, posting: &Posting, reasons: &mut Vec<String>) -> f32 {
        let posting_place = posting.location.as_deref().map(normalize::place);
        if posting.remote && self.candidate.remote_ok {
            reasons.push("remote ok".into());
            return 1.0;
        }
        match (&self.location, &posting_place) {
            (Some(mine), Some(theirs)) if mine == theirs => {
                reasons.push(format!("same location: {}", posting.location.as_deref().unwrap_or_default()));
                1.0
            }
            (Some(_), Some(_)) if posting.remote => {
                reasons.push("remote posting, candidate prefers on site".into());
                0.7
            }
            (Some(_), Some(_)) => {
                reasons
                    .push(format!("location mismatch: posting in {}", posting.location.as_deref().unwrap_or_default()));
                0.0
            }
            // One side did not say where: neither a match nor a mismatch.
            _ => 0.5,
        }
    }

    fn salary(&self, posting: &Posting, reasons: &mut Vec<String>) -> f32 {
        let Some(desired) = self.candidate.desired_salary else {
            return 1.0;
        };
        let top = posting.salary_max.or(posting.salary_min);
        match top {
            None => 0.5,
            Some(top) if top >= desired => {
                reasons.push("salary meets expectation".into());
                1.0
            }
            Some(top) => {
                reasons.push("salary below expectation".into());
                top as f32 / desired as f32
            }
        }
    }
}

struct Overlap<'p> {
    fit: f32,
    have: usize,
    of: usize,
    missing: Vec<&'p str>,
}

impl Overlap<'_> {
    fn describe(&self, kind: &str) -> String {
        let mut out = format!("{}/{} {kind} skills", self.have, self.of);
        if !self.missing.is_empty() {
            out.push_str("; missing: ");
            let named = self.missing.len().min(MAX_NAMED_MISSING);
            out.push_str(&self.missing[..named].join(", "));
            if self.missing.len() > named {
                out.push_str(&format!(" and {} more", self.missing.len() - named));
            }
        }
        out
    }
}

fn trim_float(x: f32) -> String {
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

matchbox_guest_kit::export_matcher!(Skills);

// Allocations per job are bounded by the input (a few keys per posting), and
// the instance is discarded after the job: a bump allocator is enough, and
// makes lowering the input (one allocation per string) cheaper.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ARENA: matchbox_guest_kit::arena::Arena = matchbox_guest_kit::arena::Arena::new();

#[cfg(test)]
mod tests {
    use super::*;
    use matchbox_guest_kit::Skill;

    fn skill(name: &str, weight: f32) -> Skill {
        Skill { name: name.into(), weight }
    }

    fn candidate() -> Candidate {
        Candidate {
            id: "ada".into(),
            skills: vec![skill("Rust", 1.0), skill("k8s", 0.8), skill("Postgres", 0.9), skill("JS", 0.5)],
            years_experience: 6.0,
            location: Some("Berlin".into()),
            remote_ok: true,
            desired_salary: Some(90_000),
            summary: "Backend engineer".into(),
        }
    }

    fn posting(id: &str, required: &[&str]) -> Posting {
        Posting {
            id: id.into(),
            title: id.into(),
            required_skills: required.iter().map(|s| s.to_string()).collect(),
            min_years: 3.0,
            remote: true,
            salary_max: Some(100_000),
            ..Default::default()
        }
    }

    fn options() -> Options {
        Options { top_k: 10, min_score: 0.0 }
    }

    #[test]
    fn the_obviously_right_posting_ranks_first() {
        let postings = vec![
            posting("frontend", &["react", "css", "typescript"]),
            posting("backend", &["rust", "kubernetes", "postgresql"]),
            posting("data", &["python", "spark", "postgresql"]),
        ];
        let out = Skills::rank(candidate(), postings, options()).unwrap();
        assert_eq!(out[0].posting_id, "backend");
        assert_eq!(out[1].posting_id, "data");
        assert_eq!(out[2].posting_id, "frontend");
        assert!(out.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn aliases_and_punctuation_match() {
        let postings = vec![posting("p", &["JavaScript", "Kubernetes", "PostgreSQL", "rust!"])];
        let out = Skills::rank(candidate(), postings, options()).unwrap();
        assert_eq!(out[0].reasons[0], "4/4 required skills");
    }

    #[test]
    fn reasons_read_like_a_person_wrote_them() {
        let mut p = posting("p", &["rust", "kubernetes", "postgresql", "javascript", "terraform"]);
        p.salary_max = Some(70_000);
        p.min_years = 8.0;
        let out = Skills::rank(candidate(), vec![p], options()).unwrap();
        let reasons = &out[0].reasons;
        assert!(reasons.contains(&"4/5 required skills; missing: terraform".to_string()), "{reasons:?}");
        assert!(reasons.contains(&"remote ok".to_string()));
        assert!(reasons.contains(&"salary below expectation".to_string()));
        assert!(reasons.contains(&"experience: 2 years short of 8".to_string()));
    }

    #[test]
    fn experience_gap_is_penalised() {
        let mut junior = posting("junior", &["rust"]);
        junior.min_years = 2.0;
        let mut senior = posting("senior", &["rust"]);
        senior.min_years = 12.0;
        let out = Skills::rank(candidate(), vec![senior, junior], options()).unwrap();
        assert_eq!(out[0].posting_id, "junior");
    }

    #[test]
    fn on_site_elsewhere_ranks_below_remote() {
        let remote = posting("remote", &["rust"]);
        let mut elsewhere = posting("elsewhere", &["rust"]);
        elsewhere.remote = false;
        elsewhere.location = Some("Lisbon".into());
        let mut here = posting("here", &["rust"]);
        here.remote = false;
        here.location = Some(" berlin ".into());
        let out = Skills::rank(candidate(), vec![elsewhere, here, remote], options()).unwrap();
        assert_eq!(out[2].posting_id, "elsewhere");
        assert!(out[2].reasons.iter().any(|r| r.starts_with("location mismatch")));
    }

    #[test]
    fn honours_top_k_and_min_score() {
        let postings = vec![posting("a", &["rust"]), posting("b", &["cobol", "fortran"]), posting("c", &["postgres"])];
        let out = Skills::rank(candidate(), postings.clone(), Options { top_k: 1, min_score: 0.0 }).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].posting_id, "a");
        let out = Skills::rank(candidate(), postings, Options { top_k: 10, min_score: 0.8 }).unwrap();
        assert!(out.iter().all(|r| r.score >= 0.8));
        assert!(out.iter().all(|r| r.posting_id != "b"));
    }

    #[test]
    fn scores_stay_in_range_for_extreme_input() {
        let mut c = candidate();
        c.desired_salary = Some(u32::MAX);
        c.years_experience = 0.0;
        let mut p = posting("p", &[]);
        p.min_years = 1e30;
        p.salary_max = Some(0);
        let out = Skills::rank(c, vec![p], options()).unwrap();
        assert!((0.0..=1.0).contains(&out[0].score));
    }

    #[test]
    fn rejects_nonsense_instead_of_panicking() {
        let mut c = candidate();
        c.skills.push(skill("go", f32::INFINITY));
        assert!(matches!(Skills::rank(c, vec![posting("p", &[])], options()), Err(MatchError::InvalidInput(_))));
    }
}
