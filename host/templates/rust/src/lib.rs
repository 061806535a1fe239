//! {{name}}: a matchbox matcher. It scores each posting by the share of
//! its required skills the candidate lists, best first.

// The contract's types (Candidate, Posting, Ranking...) and the `Guest`
// trait, generated from wit/matcher.wit.
wit_bindgen::generate!({ path: "wit", world: "matcher" });

use matchbox::matcher::log::{Level, log};

struct Component;

impl Guest for Component {
    fn info() -> MatcherInfo {
        MatcherInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Share of a posting's required skills the candidate lists.".into(),
        }
    }

    fn rank(candidate: Candidate, postings: Vec<Posting>, options: Options) -> Result<Vec<Ranking>, MatchError> {
        let known: Vec<String> = candidate.skills.iter().map(|s| s.name.to_lowercase()).collect();
        if known.is_empty() {
            log(Level::Info, "the candidate lists no skills");
        }
        let mut rankings: Vec<Ranking> = postings
            .iter()
            .map(|p| {
                let hits = p.required_skills.iter().filter(|s| known.contains(&s.to_lowercase())).count();
                let score = if p.required_skills.is_empty() { 1.0 } else { hits as f32 / p.required_skills.len() as f32 };
                let reason = format!("{hits}/{} required skills", p.required_skills.len());
                Ranking { posting_id: p.id.clone(), score, reasons: vec![reason] }
            })
            .filter(|r| r.score >= options.min_score)
            .collect();
        // Best first; ties by posting id, so the answer is the same every time.
        rankings.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.posting_id.cmp(&b.posting_id)));
        rankings.truncate(options.top_k as usize);
        Ok(rankings)
    }
}

export!(Component);
