//! Best-first selection of scored postings, within the contract.

use crate::model::{Options, Ranking};

/// Reasons per ranking the contract allows.
pub const MAX_REASONS: usize = 16;
/// Bytes per reason the contract allows.
pub const MAX_REASON_BYTES: usize = 1024;

/// Keeps the rankings at or above `min_score`, best first, at most `top_k`.
///
/// Equal scores are ordered by posting id, so a matcher's output is
/// deterministic whatever order the postings came in. Scores are clamped
/// into [0, 1] first (NaN counts as 0) and reasons cut to the contract's
/// caps: a rounding error, or a long skill name quoted in a reason, must not
/// become a contract breach.
pub fn best_first(scored: Vec<Ranking>, options: &Options) -> Vec<Ranking> {
    let scores: Vec<f32> = scored.iter().map(|r| r.score).collect();
    let best = best_first_indices(&scores, |i| &scored[i].posting_id, options);
    let mut scored: Vec<Option<Ranking>> = scored.into_iter().map(Some).collect();
    best.into_iter()
        .map(|(i, score)| {
            let taken = scored[i].take().expect("each index is selected once");
            ranking(taken.posting_id, score, taken.reasons)
        })
        .collect()
}

/// What [`best_first`] keeps, for a matcher that writes its reasons only for
/// the postings it returns: the indices into `scores` (posting `i` has the
/// id `id(i)`) at or above `min_score`, best first, at most `top_k`, each
/// with its score clamped into [0, 1].
pub fn best_first_indices<'a>(scores: &[f32], id: impl Fn(usize) -> &'a str, options: &Options) -> Vec<(usize, f32)> {
    let mut kept: Vec<(usize, f32)> = scores
        .iter()
        .map(|&score| if score.is_nan() { 0.0 } else { score.clamp(0.0, 1.0) })
        .enumerate()
        .filter(|&(_, score)| score >= options.min_score)
        .collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then_with(|| id(a.0).cmp(id(b.0)));
    let k = (options.top_k as usize).min(kept.len());
    if k < kept.len() {
        // Partition first so that 10,000 postings and a top_k of 10 do not
        // pay for a full sort.
        kept.select_nth_unstable_by(k, order);
        kept.truncate(k);
    }
    kept.sort_unstable_by(order);
    kept
}

/// A ranking with its reasons cut to the contract's caps.
pub fn ranking(posting_id: String, score: f32, mut reasons: Vec<String>) -> Ranking {
    reasons.truncate(MAX_REASONS);
    for reason in &mut reasons {
        cap_reason(reason);
    }
    Ranking { posting_id, score, reasons }
}

/// Cuts `reason` to [`MAX_REASON_BYTES`] at a character boundary, ending it
/// with an ellipsis when it was cut.
pub fn cap_reason(reason: &mut String) {
    const ELLIPSIS: &str = "…";
    if reason.len() <= MAX_REASON_BYTES {
        return;
    }
    let mut end = MAX_REASON_BYTES - ELLIPSIS.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push_str(ELLIPSIS);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, score: f32) -> Ranking {
        Ranking { posting_id: id.into(), score, reasons: vec![] }
    }

    #[test]
    fn keeps_the_best_k_in_order() {
        let scored = vec![r("a", 0.2), r("b", 0.9), r("c", 0.5), r("d", 0.7)];
        let out = best_first(scored, &Options { top_k: 2, min_score: 0.0 });
        let ids: Vec<_> = out.iter().map(|r| r.posting_id.as_str()).collect();
        assert_eq!(ids, ["b", "d"]);
    }

    #[test]
    fn drops_scores_under_the_minimum_and_clamps() {
        let scored = vec![r("a", 0.2), r("b", 1.000_001), r("c", 0.5)];
        let out = best_first(scored, &Options { top_k: 10, min_score: 0.3 });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 1.0);
        assert_eq!(out[1].posting_id, "c");
    }

    #[test]
    fn reasons_are_cut_to_the_contract_at_a_character() {
        let mut long = r("a", 0.5);
        long.reasons = vec!["é".repeat(2000); 20];
        long.score = f32::NAN;
        let out = best_first(vec![long], &Options { top_k: 1, min_score: 0.0 });
        assert_eq!(out[0].score, 0.0);
        assert_eq!(out[0].reasons.len(), MAX_REASONS);
        for reason in &out[0].reasons {
            assert!(reason.len() <= MAX_REASON_BYTES && reason.ends_with('…'), "{} bytes", reason.len());
        }
    }

    #[test]
    fn ties_are_deterministic() {
        let scored = vec![r("b", 0.5), r("a", 0.5), r("c", 0.5)];
        let out = best_first(scored, &Options { top_k: 2, min_score: 0.0 });
        let ids: Vec<_> = out.iter().map(|r| r.posting_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
