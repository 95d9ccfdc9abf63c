#!/usr/bin/env python3
"""Several questions about one long document, in SCBench's shared-context spirit,
run against `lava serve` (its context cache on). Standard library only.

Each haystack is --haystack-tokens tokens of the essays in --docs (about 4
characters a token) with --needles facts "The special magic number for KEY is
VALUE." spread over its depth; one question per needle, asked one after
another. Three ways to answer them, for every policy x budget:

  full      the full cache (kv_policy full); the document's cache is reused
            from the context cache, exact.
  aware     compress per question, the question in the window: one user
            message holding the document and the question, so nothing is
            reused and the whole prompt is prefilled and compressed each time.
  agnostic  compress once without the question and reuse for every question:
            [system: document, user: question]; the server compresses the
            document at the message boundary when first seen and starts
            every later question from that state.

A question scores 1 when the answer contains the needle's value. Reported per
cell: accuracy with a 95% percentile-bootstrap interval over haystacks (the
questions of one haystack resampled together), the paired difference
agnostic - aware with its interval, and the prompt tokens prefilled
(lava_prefill_tokens_total) per question.

Run the server with --prefill-chunk at least the prompt's length, so a prompt
is compressed once after its prefill as in the paper (with smaller chunks the
server compresses after every chunk, and an "aware" prompt's earlier chunks
are compressed before the question is seen); the agnostic prompt's chunks
still end at the document's message boundary.

Example:
  lava serve --model smollm2-135m --weights f32 --context-cache-min 256 --prefill-chunk 8192 --port 8000 &
  python3 benches/multi_question.py --url http://127.0.0.1:8000 --haystacks 10 --json out.json
"""
import argparse
import http.client
import json
import os
import random
import sys
import urllib.parse

KEYS = ["amber", "cobalt", "falcon", "harbor", "juniper", "lantern", "meadow", "quartz", "saffron", "tundra", "violet", "willow"]


def post(url, body):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def prefilled(url):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("lava_prefill_tokens_total "):
            return float(line.split()[1])
    raise RuntimeError("no lava_prefill_tokens_total in /metrics: is this lava serve?")


def haystack(texts, tokens, needles, rng):
    chars = tokens * 4
    start = rng.randrange(len(texts) - chars)
    body = texts[start:start + chars]
    keys = rng.sample(KEYS, needles)
    facts = [(k, str(rng.randrange(1000000, 9999999))) for k in keys]
    # Needle i at depth (i + 0.5) / needles, on a sentence end.
    pieces, last = [], 0
    for i, (k, v) in enumerate(facts):
        at = int(len(body) * (i + 0.5) / needles)
        dot = body.find(". ", at)
        at = len(body) if dot < 0 else dot + 2
        pieces.append(body[last:at])
        pieces.append(f"The special magic number for {k} is {v}. ")
        last = at
    pieces.append(body[last:])
    return "".join(pieces), facts


def bootstrap(per_haystack, rng, resamples=2000):
    """95% percentile interval of the mean of per-question scores, haystacks resampled."""
    n = len(per_haystack)
    stats = []
    for _ in range(resamples):
        pick = [per_haystack[rng.randrange(n)] for _ in range(n)]
        flat = [x for h in pick for x in h]
        stats.append(sum(flat) / len(flat))
    stats.sort()
    return stats[int(0.025 * resamples)], stats[int(0.975 * resamples) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "paulgraham_essays"))
    ap.add_argument("--haystacks", type=int, default=10)
    ap.add_argument("--haystack-tokens", type=int, default=2000)
    ap.add_argument("--needles", type=int, default=4)
    ap.add_argument("--policies", default="lava,snapkv,ada-snapkv")
    ap.add_argument("--budgets", default="256,512")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every answer and the table here")
    a = ap.parse_args()
    texts = "\n\n".join(open(os.path.join(a.docs, f), encoding="utf-8", errors="replace").read() for f in sorted(os.listdir(a.docs)))
    rng = random.Random(a.seed)
    stacks = [haystack(texts, a.haystack_tokens, a.needles, rng) for _ in range(a.haystacks)]
    cells = [("full", 0, "full")]
    for p in a.policies.split(","):
        for b in a.budgets.split(","):
            cells += [(p, int(b), "aware"), (p, int(b), "agnostic")]
    records, table = [], []
    for policy, budget, mode in cells:
        scores, before = [], prefilled(a.url)
        for h, (doc, facts) in enumerate(stacks):
            got = []
            for k, v in facts:
                q = f"What is the special magic number for {k}? Answer with the number only."
                if mode == "aware":
                    messages = [{"role": "user", "content": f"{doc}\n\n{q}"}]
                else:
                    messages = [{"role": "system", "content": f"Read this document.\n\n{doc}"}, {"role": "user", "content": q}]
                body = {"messages": messages, "max_tokens": a.max_tokens, "temperature": 0, "kv_policy": policy}
                if policy != "full":
                    body["kv_budget"] = budget
                r = post(a.url, body)
                text = r["choices"][0]["message"]["content"]
                ok = int(v in text)
                got.append(ok)
                records.append({"policy": policy, "budget": budget, "mode": mode, "haystack": h, "key": k, "value": v, "answer": text,
                                "score": ok, "prompt_tokens": r["usage"]["prompt_tokens"],
                                "cached_tokens": r["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)})
            scores.append(got)
        questions = sum(len(s) for s in scores)
        mean = sum(map(sum, scores)) / questions
        lo, hi = bootstrap(scores, random.Random(a.seed))
        per_q = (prefilled(a.url) - before) / questions
        row = {"policy": policy, "budget": budget, "mode": mode, "accuracy": mean, "ci": [lo, hi], "prefilled_per_question": per_q, "scores": scores}
        table.append(row)
        print(f"{policy:>11} {budget or '-':>5} {mode:>8}: {100 * mean:5.1f}% [{100 * lo:5.1f}, {100 * hi:5.1f}]  prefilled/question {per_q:7.0f}", flush=True)
    print("\npaired agnostic - aware (points, 95% bootstrap over haystacks):")
    for policy in a.policies.split(","):
        for b in a.budgets.split(","):
            aw = next(r for r in table if r["policy"] == policy and r["budget"] == int(b) and r["mode"] == "aware")["scores"]
            ag = next(r for r in table if r["policy"] == policy and r["budget"] == int(b) and r["mode"] == "agnostic")["scores"]
            diffs = [[g - w for g, w in zip(hg, hw)] for hg, hw in zip(ag, aw)]
            flat = [x for d in diffs for x in d]
            lo, hi = bootstrap(diffs, random.Random(a.seed))
            print(f"{policy:>11} {b:>5}: {100 * sum(flat) / len(flat):+6.1f} [{100 * lo:+6.1f}, {100 * hi:+6.1f}]", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "table": table, "records": records}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
