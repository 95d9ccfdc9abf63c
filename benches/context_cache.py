#!/usr/bin/env python3
"""The context cache of `lava serve`, measured from the client side.

Modes (standard library only; the document is built from the text files of
--docs, about 4 characters a token, its real length taken from `usage`):

  share  --clients C --questions Q: one request asks the first question about
         the document (its time to first token is the cold one); then C
         clients at once each ask Q questions one after another, each a new
         chat [system: document, user: question]. Reports every TTFT, the
         cold / warm ratio, cached tokens, and the context cache's entries and
         bytes from /metrics (one prefix state for the document, however many
         clients).
  turns  --turns T: one conversation of T turns over the document; reports per
         turn the prompt tokens, cached tokens and the tokens the server
         prefilled (lava_prefill_tokens_total before and after).
  first  one request (the first question): its TTFT and cached tokens, e.g.
         after a restart with --context-cache-dir.

Example:
  lava serve --model qwen2.5-coder-1.5b --policy lava --budget 256 --context-cache-dir /tmp/ctx &
  python3 benches/context_cache.py --url http://127.0.0.1:8000 --mode share --doc-tokens 8000
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

QUESTIONS = [
    "What is the main subject of the essays above?",
    "Name one person the author mentions.",
    "What advice does the author give?",
    "Quote one sentence from the text.",
    "What is the tone of the writing?",
    "Give a one-line summary of the last essay.",
    "Which company is mentioned first?",
    "What would the author say to a student?",
]


def document(docs, tokens):
    chars = tokens * 4
    out = []
    for name in sorted(os.listdir(docs)):
        with open(os.path.join(docs, name), encoding="utf-8", errors="replace") as f:
            out.append(f.read())
        if sum(map(len, out)) >= chars:
            break
    return "\n\n".join(out)[:chars]


def stream_chat(url, messages, max_tokens, extra):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
    body = dict(messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, **extra)
    t0 = time.time()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, text, usage = None, [], None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            piece = ch.get("delta", {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.time() - t0
                text.append(piece)
    c.close()
    return dict(ttft=ttft if ttft is not None else time.time() - t0, text="".join(text), usage=usage, seconds=time.time() - t0)


def metrics(url):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def ctx_metrics(m):
    keys = ["lava_context_cache_entries{kind=\"prefix\"}", "lava_context_cache_entries{kind=\"turn\"}",
            "lava_context_cache_memory_bytes", "lava_context_cache_disk_bytes", "lava_context_cache_hits_total",
            "lava_context_cache_misses_total", "lava_context_cache_evictions_total", "lava_prefill_tokens_total"]
    return {k: m.get(k) for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--mode", choices=["share", "turns", "first"], default="share")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "paulgraham_essays"))
    ap.add_argument("--doc-tokens", type=int, default=8000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--kv-policy")
    ap.add_argument("--kv-budget", type=int)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    extra = {}
    if a.kv_policy:
        extra["kv_policy"] = a.kv_policy
    if a.kv_budget:
        extra["kv_budget"] = a.kv_budget
    doc = document(a.docs, a.doc_tokens)
    system = {"role": "system", "content": "Answer questions about these essays.\n\n" + doc}
    result = {"mode": a.mode}
    if a.mode in ("share", "first"):
        first = stream_chat(a.url, [system, {"role": "user", "content": QUESTIONS[0]}], a.max_tokens, extra)
        result["first"] = {"ttft_s": first["ttft"], "prompt_tokens": first["usage"]["prompt_tokens"],
                           "cached_tokens": first["usage"]["prompt_tokens_details"]["cached_tokens"]}
        print(f"first request: TTFT {first['ttft']:.2f} s, prompt {first['usage']['prompt_tokens']} tokens, "
              f"cached {result['first']['cached_tokens']}", flush=True)
    if a.mode == "share":
        runs, lock = [], threading.Lock()

        def client(i):
            for q in range(a.questions):
                question = QUESTIONS[(i + q) % len(QUESTIONS)] + f" (client {i}, question {q})"
                r = stream_chat(a.url, [system, {"role": "user", "content": question}], a.max_tokens, extra)
                with lock:
                    runs.append((i, q, r["ttft"], r["usage"]["prompt_tokens_details"]["cached_tokens"], r["usage"]["prompt_tokens"]))

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ttfts = sorted(r[2] for r in runs)
        cold = result["first"]["ttft_s"]
        result["warm"] = {"requests": len(runs), "seconds": time.time() - t0, "ttft_median_s": statistics.median(ttfts),
                          "ttft_max_s": ttfts[-1], "ttft_min_s": ttfts[0], "cold_over_median": cold / statistics.median(ttfts),
                          "cold_over_max": cold / ttfts[-1], "cached_tokens_min": min(r[3] for r in runs)}
        print(f"{len(runs)} requests by {a.clients} clients after the first: TTFT median {statistics.median(ttfts):.3f} s, "
              f"max {ttfts[-1]:.3f} s; cold / median {cold / statistics.median(ttfts):.1f}x, cold / max {cold / ttfts[-1]:.1f}x; "
              f"cached tokens at least {result['warm']['cached_tokens_min']}", flush=True)
    if a.mode == "turns":
        messages = [system]
        result["turns"] = []
        for t in range(a.turns):
            messages.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
            before = metrics(a.url)["lava_prefill_tokens_total"]
            r = stream_chat(a.url, messages, a.max_tokens, extra)
            after = metrics(a.url)["lava_prefill_tokens_total"]
            u = r["usage"]
            row = {"turn": t + 1, "prompt_tokens": u["prompt_tokens"], "cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                   "prefilled": after - before, "ttft_s": r["ttft"]}
            result["turns"].append(row)
            print(f"turn {t + 1}: prompt {row['prompt_tokens']}, cached {row['cached_tokens']}, prefilled {row['prefilled']:.0f}, "
                  f"TTFT {r['ttft']:.2f} s", flush=True)
            messages.append({"role": "assistant", "content": r["text"]})
    result["metrics"] = ctx_metrics(metrics(a.url))
    print(json.dumps(result["metrics"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
