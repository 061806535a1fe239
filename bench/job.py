#!/usr/bin/env python3
"""Prints the body of a `POST /jobs/match` request with N postings (the
benchmark job of `bench/http.sh` and `bench/instructions.sh`): one
candidate with four skills, postings that each require two of eight skills,
the best 10 asked for."""
import json
import sys

n = int(sys.argv[1])
skills = ["rust", "go", "python", "kubernetes", "terraform", "postgresql", "react", "aws"]
print(json.dumps({
    "candidate": {"id": "bench", "skills": [{"name": s, "weight": 0.8} for s in skills[:4]],
                  "years_experience": 5, "remote_ok": True, "desired_salary": 90000,
                  "summary": "Backend engineer building distributed systems in Rust and Go."},
    "postings": [{"id": f"p{i}", "title": f"{skills[i % 8]} engineer",
                  "description": "Build and run services; code review; on-call.",
                  "required_skills": [skills[i % 8], skills[(i + 3) % 8]], "preferred_skills": [skills[(i + 5) % 8]],
                  "min_years": i % 7, "remote": i % 2 == 0, "salary_max": 80000 + 1000 * (i % 30)} for i in range(n)],
    "options": {"top_k": 10}}))
