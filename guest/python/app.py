"""keywords: a matchbox matcher written in Python.

It scores each posting by the share of its required and preferred skills
(and title words) found among the candidate's skills and summary words. It is
the worked example for authors in languages other than Rust: the same WIT
contract, built with componentize-py instead of cargo.

Build (from this directory):

    pip install componentize-py==0.25.1
    componentize-py -d ../../wit -w matcher componentize app -o keywords.wasm

Then upload it:

    curl -X PUT --data-binary @keywords.wasm localhost:8080/matchers/keywords
"""

from typing import List

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types


def words(text: str) -> set:
    return {w.strip(".,;:!?()").lower() for w in text.split() if w.strip(".,;:!?()")}


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.MatcherInfo:
        return types.MatcherInfo(
            name="keywords",
            version="0.1.0",
            description="Share of a posting's skills and title words the candidate mentions (Python).",
        )

    def rank(
        self, candidate: types.Candidate, postings: List[types.Posting], options: types.Options
    ) -> List[types.Ranking]:
        if options.top_k == 0:
            raise Err(types.MatchError_InvalidInput("options.top_k must be at least 1"))
        if not 0.0 <= options.min_score <= 1.0:
            raise Err(types.MatchError_InvalidInput("options.min_score must be in [0, 1]"))
        known = {s.name.lower() for s in candidate.skills} | words(candidate.summary)
        log.log(log.Level.DEBUG, f"ranking {len(postings)} postings against {len(known)} known words")

        scored = []
        for p in postings:
            wanted = {s.lower() for s in p.required_skills + p.preferred_skills} | words(p.title)
            if not wanted:
                continue
            hits = sorted(wanted & known)
            score = len(hits) / len(wanted)
            if score < options.min_score:
                continue
            reason = f"{len(hits)}/{len(wanted)} keywords" + (f": {', '.join(hits[:5])}" if hits else "")
            scored.append(types.Ranking(posting_id=p.id, score=score, reasons=[reason]))

        scored.sort(key=lambda r: (-r.score, r.posting_id))
        return scored[: options.top_k]
