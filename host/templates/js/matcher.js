// {{name}}: a matchbox matcher. It scores each posting by the share of its
// required skills the candidate lists, best first.

import { log } from "matchbox:matcher/log@0.1.0";

export function info() {
  return {
    name: "{{name}}",
    version: "0.1.0",
    description: "Share of a posting's required skills the candidate lists.",
  };
}

export function rank(candidate, postings, options) {
  const known = new Set(candidate.skills.map((s) => s.name.toLowerCase()));
  if (known.size === 0) log("info", "the candidate lists no skills");
  const rankings = [];
  for (const p of postings) {
    const required = p.requiredSkills.map((s) => s.toLowerCase());
    const hits = required.filter((s) => known.has(s)).length;
    const score = required.length > 0 ? hits / required.length : 1;
    if (score >= options.minScore) {
      rankings.push({ postingId: p.id, score, reasons: [`${hits}/${required.length} required skills`] });
    }
  }
  // Best first; ties by posting id, so the answer is the same every time.
  rankings.sort((a, b) => b.score - a.score || (a.postingId < b.postingId ? -1 : 1));
  return rankings.slice(0, options.topK);
}
