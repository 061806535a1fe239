// keywords-js: a matchbox matcher written in JavaScript.
//
// It scores each posting by the share of its required and preferred skills
// (and title words) that the candidate names among its skills or in its
// summary: the same rule as the Python example, so the two can be compared.
// Build it with componentize-js: the README's "Writing a matcher" section
// gives the command, which CI runs (tests/tests/author.rs).

import { log } from "matchbox:matcher/log@0.1.0";

const MAX_REASON_BYTES = 1024;

function words(text) {
  return text
    .split(/\s+/)
    .map((w) => w.replace(/^[.,;:!?()]+|[.,;:!?()]+$/g, "").toLowerCase())
    .filter((w) => w.length > 0);
}

// Keeps a reason within the contract's 1 KiB, cutting at a character.
function capped(reason) {
  const bytes = new TextEncoder().encode(reason);
  if (bytes.length <= MAX_REASON_BYTES) return reason;
  let text = reason;
  while (new TextEncoder().encode(text + "…").length > MAX_REASON_BYTES) {
    text = text.slice(0, -1);
  }
  return text + "…";
}

export function info() {
  return {
    name: "keywords-js",
    version: "0.1.0",
    description: "Share of a posting's skills and title words the candidate mentions (JavaScript).",
  };
}

export function rank(candidate, postings, options) {
  if (options.topK === 0) {
    throw { tag: "invalid-input", val: "options.top_k must be at least 1" };
  }
  if (!(options.minScore >= 0 && options.minScore <= 1)) {
    throw { tag: "invalid-input", val: "options.min_score must be in [0, 1]" };
  }
  const known = new Set([...candidate.skills.map((s) => s.name.toLowerCase()), ...words(candidate.summary)]);
  log("debug", `ranking ${postings.length} postings against ${known.size} known words`);

  const scored = [];
  for (const p of postings) {
    const wanted = new Set([...p.requiredSkills, ...p.preferredSkills].map((s) => s.toLowerCase()));
    for (const w of words(p.title)) wanted.add(w);
    if (wanted.size === 0) continue;
    const hits = [...wanted].filter((w) => known.has(w)).sort();
    const score = hits.length / wanted.size;
    if (score < options.minScore) continue;
    const named = hits.length > 0 ? `: ${hits.slice(0, 5).join(", ")}` : "";
    scored.push({ postingId: p.id, score, reasons: [capped(`${hits.length}/${wanted.size} keywords${named}`)] });
  }
  scored.sort((a, b) => b.score - a.score || (a.postingId < b.postingId ? -1 : 1));
  return scored.slice(0, options.topK);
}
