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
        let mut profile = Profile::new(&candidate);
        if postings.len() <= options.top_k as usize {
            // Every posting may be returned: explain each as it is scored.
            let scored = postings
                .iter()
                .map(|p| {
                    let mut reasons = Vec::with_capacity(5);
                    let score = profile.assess(p, Some(&mut reasons));
                    Ranking { posting_id: p.id.clone(), score, reasons }
                })
                .collect();
            return Ok(select::best_first(scored, &options));
        }
        // Only the postings returned are explained: with 1,000 postings and
        // a top_k of 10, writing reasons for the 990 left out was most of
        // the work.
        let scores: Vec<f32> = postings.iter().map(|p| profile.assess(p, None)).collect();
        let best = select::best_first_indices(&scores, |i| &postings[i].id, &options);
        Ok(best
            .into_iter()
            .map(|(i, score)| {
                let mut reasons = Vec::with_capacity(5);
                profile.assess(&postings[i], Some(&mut reasons));
                select::ranking(postings[i].id.clone(), score, reasons)
            })
            .collect())
    }
}

/// The candidate, prepared once for scoring many postings.
struct Profile<'a> {
    candidate: &'a Candidate,
    /// Normalised skill names with the best weight the candidate gave each,
    /// sorted by name: a candidate lists a handful of skills, and a binary
    /// search of them needs no hashing (nor the random seed a `HashMap`
    /// asks the host for).
    skills: Vec<(String, f32)>,
    location: Option<String>,
    /// Reused for every skill name looked up.
    key: String,
}

impl<'a> Profile<'a> {
    fn new(candidate: &'a Candidate) -> Self {
        let mut skills: Vec<(String, f32)> =
            candidate.skills.iter().map(|skill| (skill_key(&skill.name), skill.weight)).collect();
        skills.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        // Sorted by name and then best weight first: keep the first of each.
        skills.dedup_by(|later, first| later.0 == first.0);
        let location = candidate.location.as_deref().map(normalize::place);
        Profile { candidate, skills, location, key: String::new() }
    }

    fn weight(&mut self, name: &str) -> Option<f32> {
        normalize::skill_key_into(name, &mut self.key);
        let key = self.key.as_str();
        self.skills.binary_search_by(|(have, _)| have.as_str().cmp(key)).ok().map(|i| self.skills[i].1)
    }

    /// The posting's score; with `reasons`, also what explains it.
    fn assess(&mut self, posting: &Posting, mut reasons: Option<&mut Vec<String>>) -> f32 {
        let required_fit = self.overlap(&posting.required_skills, "required", reasons.as_deref_mut());
        let preferred_fit = self.overlap(&posting.preferred_skills, "preferred", reasons.as_deref_mut());
        let experience_fit = self.experience(posting, reasons.as_deref_mut());
        let location_fit = self.location(posting, reasons.as_deref_mut());
        let salary_fit = self.salary(posting, reasons);

        W_REQUIRED * required_fit
            + W_PREFERRED * preferred_fit
            + W_EXPERIENCE * experience_fit
            + W_LOCATION * location_fit
            + W_SALARY * salary_fit
    }

    /// The share of `wanted` the candidate has, by weight; full marks when
    /// the posting wants none.
    fn overlap(&mut self, wanted: &[String], kind: &str, reasons: Option<&mut Vec<String>>) -> f32 {
        if wanted.is_empty() {
            return 1.0;
        }
        let mut total = 0.0;
        let mut have = 0;
        let mut missing = Vec::new();
        for name in wanted {
            match self.weight(name) {
                Some(weight) => {
                    total += weight;
                    have += 1;
                }
                None if reasons.is_some() => missing.push(name.as_str()),
                None => {}
            }
        }
        if let Some(reasons) = reasons {
            reasons.push(describe_overlap(have, wanted.len(), kind, &missing));
        }
        total / wanted.len() as f32
    }

    fn experience(&self, posting: &Posting, reasons: Option<&mut Vec<String>>) -> f32 {
        let have = self.candidate.years_experience;
        let need = posting.min_years;
        if need <= 0.0 || have >= need {
            if need > 0.0
                && let Some(reasons) = reasons
            {
                reasons.push(format!("meets {} years of experience", trim_float(need)));
            }
            return 1.0;
        }
        let gap = need - have;
        if let Some(reasons) = reasons {
            reasons.push(format!("experience: {} years short of {}", trim_float(gap), trim_float(need)));
        }
        (1.0 - gap / need).max(0.0)
    }

    fn location(&self, posting: &Posting, reasons: Option<&mut Vec<String>>) -> f32 {
        if posting.remote && self.candidate.remote_ok {
            push(reasons, || "remote ok".into());
            return 1.0;
        }
        let (Some(mine), Some(theirs)) = (&self.location, posting.location.as_deref()) else {
            // One side did not say where: neither a match nor a mismatch.
            return 0.5;
        };
        if *mine == normalize::place(theirs) {
            push(reasons, || format!("same location: {theirs}"));
            1.0
        } else if posting.remote {
            push(reasons, || "remote posting, candidate prefers on site".into());
            0.7
        } else {
            push(reasons, || format!("location mismatch: posting in {theirs}"));
            0.0
        }
    }

    fn salary(&self, posting: &Posting, reasons: Option<&mut Vec<String>>) -> f32 {
        let Some(desired) = self.candidate.desired_salary else {
            return 1.0;
        };
        let top = posting.salary_max.or(posting.salary_min);
        match top {
            None => 0.5,
            Some(top) if top >= desired => {
                push(reasons, || "salary meets expectation".into());
                1.0
            }
            Some(top) => {
                push(reasons, || "salary below expectation".into());
                top as f32 / desired as f32
            }
        }
    }
}

/// Adds a reason when reasons are being written.
fn push(reasons: Option<&mut Vec<String>>, reason: impl FnOnce() -> String) {
    if let Some(reasons) = reasons {
        reasons.push(reason());
    }
}

fn describe_overlap(have: usize, of: usize, kind: &str, missing: &[&str]) -> String {
    let mut out = format!("{have}/{of} {kind} skills");
    if !missing.is_empty() {
        out.push_str("; missing: ");
        let named = missing.len().min(MAX_NAMED_MISSING);
        out.push_str(&missing[..named].join(", "));
        if missing.len() > named {
            out.push_str(&format!(" and {} more", missing.len() - named));
        }
    }
    out
}

/// `x` with one decimal, or none when it is a whole number (years are
/// usually whole: those are written as integers, without the exact float
/// formatting that `{:.0}` goes through, and read the same).
fn trim_float(x: f32) -> String {
    if x.fract() == 0.0 && (0.0..1e18).contains(&x) && x.is_sign_positive() {
        (x as u64).to_string()
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
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

    /// What `rank` did before it explained only the postings it returns:
    /// every posting scored with its reasons, then the best kept.
    fn explain_all_then_select(candidate: &Candidate, postings: &[Posting], options: &Options) -> Vec<Ranking> {
        let mut profile = Profile::new(candidate);
        let scored = postings
            .iter()
            .map(|p| {
                let mut reasons = Vec::new();
                let score = profile.assess(p, Some(&mut reasons));
                Ranking { posting_id: p.id.clone(), score, reasons }
            })
            .collect();
        select::best_first(scored, options)
    }

    #[test]
    fn explaining_only_the_kept_postings_changes_nothing() {
        const NAMES: &[&str] =
            &["Rust", "rust!", "K8s", "JS", "Node.js", "C#", ".NET", "machine-learning", "Σίσυφος", "  a  b ", "x"];
        const PLACES: &[&str] = &["Berlin", " berlin ", "Lisbon", "New   York", "ΣΟΦΊΑ", "İzmir"];
        let mut seed = 7_u64;
        let mut next = move |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..300 {
            let mut c = candidate();
            c.skills = (0..next(5)).map(|_| skill(NAMES[next(NAMES.len())], next(11) as f32 / 10.0)).collect();
            c.location = [None, Some(PLACES[next(PLACES.len())].to_string())][next(2)].clone();
            c.remote_ok = next(2) == 0;
            let postings: Vec<Posting> = (0..next(25))
                .map(|i| {
                    let mut p = posting(&format!("p{}-{i}", next(50)), &[]);
                    p.required_skills = (0..next(8)).map(|_| NAMES[next(NAMES.len())].to_string()).collect();
                    p.preferred_skills = (0..next(3)).map(|_| NAMES[next(NAMES.len())].to_string()).collect();
                    p.min_years = [0.0, 2.0, 2.5, 7.0, 0.35][next(5)];
                    p.location = [None, Some(PLACES[next(PLACES.len())].to_string())][next(2)].clone();
                    p.remote = next(2) == 0;
                    p.salary_max = [None, Some(50_000), Some(120_000)][next(3)];
                    p
                })
                .collect();
            let options = Options { top_k: 1 + next(12) as u32, min_score: [0.0, 0.5][next(2)] };
            let expected = explain_all_then_select(&c, &postings, &options);
            assert_eq!(Skills::rank(c, postings, options).unwrap(), expected);
        }
    }

    #[test]
    fn rejects_nonsense_instead_of_panicking() {
        let mut c = candidate();
        c.skills.push(skill("go", f32::INFINITY));
        assert!(matches!(Skills::rank(c, vec![posting("p", &[])], options()), Err(MatchError::InvalidInput(_))));
    }
}
