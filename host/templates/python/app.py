"""{{name}}: a matchbox matcher. It scores each posting by the share of its
required skills the candidate lists, best first."""

from typing import List

import wit_world
from wit_world.imports import log, types


class WitWorld(wit_world.WitWorld):
    def info(self) -> types.MatcherInfo:
        return types.MatcherInfo(
            name="{{name}}",
            version="0.1.0",
            description="Share of a posting's required skills the candidate lists.",
        )

    def rank(
        self, candidate: types.Candidate, postings: List[types.Posting], options: types.Options
    ) -> List[types.Ranking]:
        known = {s.name.lower() for s in candidate.skills}
        if not known:
            log.log(log.Level.INFO, "the candidate lists no skills")
        rankings = []
        for p in postings:
            required = [s.lower() for s in p.required_skills]
            hits = sum(1 for s in required if s in known)
            score = hits / len(required) if required else 1.0
            if score >= options.min_score:
                rankings.append(
                    types.Ranking(posting_id=p.id, score=score, reasons=[f"{hits}/{len(required)} required skills"])
                )
        # Best first; ties by posting id, so the answer is the same every time.
        rankings.sort(key=lambda r: (-r.score, r.posting_id))
        return rankings[: options.top_k]
