//! `text`, a BM25 matcher.
//!
//! Each posting's title and description form one document (the title counted
//! twice: a word in the title says more than one in the body). The query is the
//! candidate's summary and skill names. Both go through the same analysis:
//! lower-casing, splitting on anything that is not a letter, digit, `+` or `#`,
//! dropping English stop words, and a light suffix-stripping stemmer.
//!
//! BM25 (k1 = 1.2, b = 0.75) scores are normalised into [0, 1] by the largest
//! score any document could reach for this query: each query term contributes
//! at most `idf * (k1 + 1)`, so the sum of those over the query's terms is an
//! upper bound that does not depend on which other postings were submitted.

use std::collections::HashMap;

use matchbox_guest_kit::{Candidate, MatchError, Matcher, MatcherInfo, Options, Posting, Ranking, check, select};

mod analyze;

pub use analyze::terms;

const K1: f32 = 1.2;
const B: f32 = 0.75;
/// How many matched terms a reason names.
const MAX_NAMED_TERMS: usize = 5;

/// The BM25 matcher.
#[derive(Debug)]
pub struct Text;

impl Matcher for Text {
    fn info() -> MatcherInfo {
        MatcherInfo {
            name: "text".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "BM25 over posting titles and descriptions against the candidate's summary and skills.".into(),
        }
    }

    fn rank(candidate: Candidate, postings: Vec<Posting>, options: Options) -> Result<Vec<Ranking>, MatchError> {
        check::inputs(&candidate, &postings, &options)?;
        let mut query: Vec<String> = terms(&candidate.summary);
        for skill in &candidate.skills {
            query.extend(terms(&skill.name));
        }
        query.sort_unstable();
        query.dedup();

        let docs: Vec<Document> = postings.iter().map(Document::new).collect();
        let index = Corpus::new(&docs, &query);
        let scored = postings.iter().zip(&docs).map(|(p, d)| index.score(p, d, &query)).collect();
        Ok(select::best_first(scored, &options))
    }
}

/// One posting's term frequencies and length.
struct Document {
    tf: HashMap<String, u32>,
    len: u32,
}

impl Document {
    fn new(posting: &Posting) -> Self {
        let mut tf = HashMap::new();
        let mut len = 0;
        let title = terms(&posting.title);
        for term in title.iter().chain(&title).cloned().chain(terms(&posting.description)) {
            *tf.entry(term).or_insert(0) += 1;
            len += 1;
        }
        Document { tf, len }
    }
}

/// Corpus statistics for the query's terms.
struct Corpus {
    idf: HashMap<String, f32>,
    avg_len: f32,
    /// The score a document would reach with every query term saturated.
    ceiling: f32,
}

impl Corpus {
    fn new(docs: &[Document], query: &[String]) -> Self {
        let n = docs.len() as f32;
        let avg_len = if docs.is_empty() { 1.0 } else { (docs.iter().map(|d| d.len as f32).sum::<f32>() / n).max(1.0) };
        let mut idf = HashMap::with_capacity(query.len());
        for term in query {
            let df = docs.iter().filter(|d| d.tf.contains_key(term)).count() as f32;
            idf.insert(term.clone(), (1.0 + (n - df + 0.5) / (df + 0.5)).ln());
        }
        let ceiling = idf.values().map(|w| w * (K1 + 1.0)).sum();
        Corpus { idf, avg_len, ceiling }
    }

    fn score(&self, posting: &Posting, doc: &Document, query: &[String]) -> Ranking {
        let mut raw = 0.0;
        let mut matched: Vec<(f32, &str)> = Vec::new();
        let norm = K1 * (1.0 - B + B * doc.len as f32 / self.avg_len);
        for term in query {
            let Some(&tf) = doc.tf.get(term) else { continue };
            let tf = tf as f32;
            let contribution = self.idf[term] * tf * (K1 + 1.0) / (tf + norm);
            raw += contribution;
            matched.push((contribution, term));
        }
        let score = if self.ceiling > 0.0 { raw / self.ceiling } else { 0.0 };
        matched.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let reasons = if matched.is_empty() {
            vec!["no terms in common with the candidate".to_string()]
        } else {
            let named: Vec<&str> = matched.iter().take(MAX_NAMED_TERMS).map(|(_, t)| *t).collect();
            vec![format!("{}/{} query terms matched: {}", matched.len(), query.len(), named.join(", "))]
        };
        Ranking { posting_id: posting.id.clone(), score, reasons }
    }
}

matchbox_guest_kit::export_matcher!(Text);

// Allocations per job are bounded by the input (the terms of each posting),
// and the instance is discarded after the job: a bump allocator is enough.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ARENA: matchbox_guest_kit::arena::Arena = matchbox_guest_kit::arena::Arena::new();

#[cfg(test)]
mod tests {
    use super::*;
    use matchbox_guest_kit::Skill;

    fn candidate() -> Candidate {
        Candidate {
            id: "grace".into(),
            skills: vec![Skill { name: "Rust".into(), weight: 1.0 }, Skill { name: "Kubernetes".into(), weight: 0.7 }],
            years_experience: 5.0,
            summary: "Systems engineer who builds distributed databases and storage engines in Rust.".into(),
            ..Default::default()
        }
    }

    fn posting(id: &str, title: &str, description: &str) -> Posting {
        Posting { id: id.into(), title: title.into(), description: description.into(), ..Default::default() }
    }

    fn options() -> Options {
        Options { top_k: 10, min_score: 0.0 }
    }

    fn fixtures() -> Vec<Posting> {
        vec![
            posting("baker", "Pastry chef", "Bake bread and cakes for our morning shift."),
            posting(
                "storage",
                "Storage engine engineer (Rust)",
                "Build the storage engine of a distributed database. Rust, Kubernetes.",
            ),
            posting("web", "Web developer", "Build marketing websites with a CMS; some engineering."),
        ]
    }

    #[test]
    fn the_obviously_right_posting_ranks_first() {
        let out = Text::rank(candidate(), fixtures(), options()).unwrap();
        assert_eq!(out[0].posting_id, "storage");
        assert_eq!(out.last().unwrap().posting_id, "baker");
        assert!(out[0].reasons[0].contains("rust"), "{:?}", out[0].reasons);
    }

    #[test]
    fn scores_are_normalised() {
        let out = Text::rank(candidate(), fixtures(), options()).unwrap();
        assert!(out.iter().all(|r| (0.0..=1.0).contains(&r.score)));
        assert_eq!(out.last().unwrap().score, 0.0);
    }

    #[test]
    fn honours_top_k_and_min_score() {
        let out = Text::rank(candidate(), fixtures(), Options { top_k: 1, min_score: 0.0 }).unwrap();
        assert_eq!(out.len(), 1);
        let out = Text::rank(candidate(), fixtures(), Options { top_k: 10, min_score: 0.01 }).unwrap();
        assert!(out.iter().all(|r| r.posting_id != "baker"));
    }

    #[test]
    fn empty_query_scores_zero_without_dividing_by_it() {
        let c = Candidate { id: "x".into(), ..Default::default() };
        let out = Text::rank(c, fixtures(), options()).unwrap();
        assert!(out.iter().all(|r| r.score == 0.0));
    }

    #[test]
    fn rejects_nonsense_instead_of_panicking() {
        let mut c = candidate();
        c.years_experience = -1.0;
        assert!(matches!(Text::rank(c, fixtures(), options()), Err(MatchError::InvalidInput(_))));
    }
}
