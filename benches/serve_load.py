#!/usr/bin/env python3
"""Load benchmark for any OpenAI-compatible server (`lava serve`, llama-server...).

C concurrent clients on loopback, each sending a long document (about
--doc-tokens tokens, taken from the text files of --docs) plus a question as one
streamed chat completion asking for --max-tokens tokens, until --requests
requests are done or --time-limit seconds have passed. Standard library only.

Reports: requests done/refused, aggregate decode tokens/s (client side: tokens
after the first of each request over the span in which any request was decoding;
server side from lava's /metrics when it has them), time to first token and
inter-token latency (p50, p95), ITL split by whether some other request of the
run was between its send and its first token (a prefill or a queue wait was
going on), peak concurrent sequences and KV bytes (lava's /metrics) and the
server's peak RSS (VmHWM of --pid).

With --late K the last K requests are held back until every other request has
its first token (all their prompts prefilled, all of them decoding) and
--late-delay more seconds have passed: the ITL of the early requests while a
late prompt prefills, against their steady ITL (gaps after the last early
first token during which no prompt prefilled), is then reported apart
(`itl_late_*`): what a new long prompt costs the conversations already running.

Example:
  lava serve --port 8000 --kv-memory 1GiB &
  python3 benches/serve_load.py --url http://127.0.0.1:8000 --concurrency 16 \
      --requests 16 --kv-policy lava --kv-budget 128 --pid $!
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


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load_docs(path, chars):
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
    if not files:
        sys.exit(f"no .txt files in {path}")
    text = ""
    docs = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as h:
            text += h.read() + "\n\n"
        while len(text) >= chars:
            docs.append(text[:chars])
            text = text[chars:]
    if not docs:
        docs.append(text)
    return docs


def read_metrics(host, port):
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        if r.status != 200:
            return {}
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Result:
    def __init__(self):
        self.status = None
        self.t_send = None
        self.t_first = None
        self.t_end = None
        self.token_times = []
        self.completion_tokens = None
        self.prompt_tokens = None
        self.error = None
        self.late = False


OPEN = set()
OPEN_LOCK = threading.Lock()


def one_request(host, port, path, headers, body, res):
    res.t_send = time.monotonic()
    c = None
    try:
        c = http.client.HTTPConnection(host, port, timeout=3600)
        c.connect()
        with OPEN_LOCK:
            OPEN.add(c)
        c.request("POST", path, body=json.dumps(body), headers=headers)
        r = c.getresponse()
        res.status = r.status
        if r.status != 200:
            res.error = r.read().decode(errors="replace")[:300]
            res.t_end = time.monotonic()
            return
        for raw in r:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            j = json.loads(data)
            if j.get("usage"):
                res.completion_tokens = j["usage"].get("completion_tokens")
                res.prompt_tokens = j["usage"].get("prompt_tokens")
            for ch in j.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                if piece:
                    now = time.monotonic()
                    if res.t_first is None:
                        res.t_first = now
                    res.token_times.append(now)
        c.close()
    except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
        res.error = repr(e)
    finally:
        with OPEN_LOCK:
            OPEN.discard(c)
    res.t_end = time.monotonic()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000 (loopback only)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=900.0, help="stop sending new requests after this many seconds")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--docs", default=os.path.join(here, "..", "..", "shared", "data", "paulgraham_essays"))
    ap.add_argument("--doc-tokens", type=int, default=4000, help="approximate document length (4 characters a token)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kv-policy", default=None, help="lava's per-request kv_policy (omitted when not given)")
    ap.add_argument("--kv-budget", type=int, default=None)
    ap.add_argument("--model", default=None, help="the request's model field (omitted when not given)")
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (lava, vLLM, llama-server): every request generates --max-tokens")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--pid", type=int, default=None, help="server PID, for its peak RSS")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default=None, help="append the summary as one JSON line to this file")
    ap.add_argument("--abort-after", type=float, default=None,
                    help="close every open request after this many seconds (a capacity probe: admission and queue, then cancellation)")
    ap.add_argument("--late", type=int, default=0,
                    help="hold the last K requests back until all others decode (see above); needs --concurrency >= --requests")
    ap.add_argument("--late-delay", type=float, default=5.0, help="seconds of steady decoding before the late requests are sent")
    ap.add_argument("--late-max-tokens", type=int, default=None, help="max_tokens of the late requests (default --max-tokens)")
    a = ap.parse_args()
    if a.late and (a.late >= a.requests or a.concurrency < a.requests):
        sys.exit("--late K needs K < --requests and --concurrency >= --requests")

    u = urllib.parse.urlparse(a.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the benchmark runs on loopback only")
    host, port = u.hostname, u.port or 80
    docs = load_docs(a.docs, a.doc_tokens * 4)
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = f"Bearer {a.api_key}"

    m0 = read_metrics(host, port)
    peak = {"running": 0.0, "kv_alloc": 0.0, "kv_reserved": 0.0, "queued": 0.0}
    stop_sampling = threading.Event()
    # batch size -> [decode tokens, decode seconds] over sampling intervals that began and ended at that batch size.
    by_batch = {}

    def sampler():
        prev = None
        while not stop_sampling.is_set():
            m = read_metrics(host, port)
            if prev is not None and m and m.get("lava_decode_batch_size") == prev.get("lava_decode_batch_size"):
                b = int(m.get("lava_decode_batch_size", 0))
                dn = m.get("lava_decode_tokens_total", 0) - prev.get("lava_decode_tokens_total", 0)
                dt = m.get("lava_decode_seconds_total", 0) - prev.get("lava_decode_seconds_total", 0)
                if b > 0 and dt > 0:
                    acc = by_batch.setdefault(b, [0.0, 0.0])
                    acc[0] += dn
                    acc[1] += dt
            prev = m or prev
            peak["running"] = max(peak["running"], m.get("lava_running_sequences", 0.0))
            peak["kv_alloc"] = max(peak["kv_alloc"], m.get("lava_kv_allocated_bytes", 0.0))
            peak["kv_reserved"] = max(peak["kv_reserved"], m.get("lava_kv_reserved_bytes", 0.0))
            peak["queued"] = max(peak["queued"], m.get("lava_queued_requests", 0.0))
            stop_sampling.wait(0.25)

    results = []
    lock = threading.Lock()
    counter = [0]
    t0 = time.monotonic()

    started = []  # every request's Result, from its send

    def send(i, max_tokens):
        doc = docs[i % len(docs)]
        body = {
            "messages": [{"role": "user", "content": doc + "\n\nQuestion: what is the main point of this text? Answer in a few sentences."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if a.model:
            body["model"] = a.model
        if a.kv_policy:
            body["kv_policy"] = a.kv_policy
        if a.kv_budget:
            body["kv_budget"] = a.kv_budget
        if a.ignore_eos:
            body["ignore_eos"] = True
        res = Result()
        res.late = i >= a.requests - a.late if a.late else False
        with lock:
            started.append(res)
        one_request(host, port, "/v1/chat/completions", headers, body, res)
        with lock:
            results.append(res)

    def client():
        while True:
            with lock:
                i = counter[0]
                if i >= a.requests - a.late or time.monotonic() - t0 > a.time_limit:
                    return
                counter[0] += 1
            send(i, a.max_tokens)

    late_threads = []

    def late_sender():
        early = a.requests - a.late
        while True:
            with lock:
                mine = [r for r in started if not r.late]
                ready = len(mine) == early and all(r.t_first is not None or r.t_end is not None for r in mine)
            if ready or time.monotonic() - t0 > a.time_limit:
                break
            time.sleep(0.05)
        time.sleep(a.late_delay)
        for i in range(early, a.requests):
            t = threading.Thread(target=send, args=(i, a.late_max_tokens or a.max_tokens))
            t.start()
            late_threads.append(t)

    st = threading.Thread(target=sampler, daemon=True)
    st.start()
    if a.abort_after:
        def abort():
            time.sleep(a.abort_after)
            with lock:
                counter[0] = a.requests
            with OPEN_LOCK:
                for c in list(OPEN):
                    try:
                        c.sock.shutdown(2)
                    except (OSError, AttributeError):
                        pass
        threading.Thread(target=abort, daemon=True).start()
    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    if a.late:
        threads.append(threading.Thread(target=late_sender))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in late_threads:
        t.join()
    wall = time.monotonic() - t0
    stop_sampling.set()
    st.join()
    m1 = read_metrics(host, port)

    ok = [r for r in results if r.status == 200 and r.t_first is not None]
    refused = [r for r in results if r.status is not None and r.status != 200]
    failed = [r for r in results if r.status is None]
    aborted = [r for r in results if r.status == 200 and r.error]
    ttft = [r.t_first - r.t_send for r in ok]
    # Prefill (or queue) windows: from a request's send to its first token.
    windows = [(r.t_send, r.t_first) for r in ok]
    itl_all, itl_during, itl_steady = [], [], []
    for r in ok:
        own = (r.t_send, r.t_first)
        for t_prev, t_next in zip(r.token_times, r.token_times[1:]):
            g = t_next - t_prev
            itl_all.append(g)
            busy = any(w != own and w[0] < t_next and w[1] > t_prev for w in windows)
            (itl_during if busy else itl_steady).append(g)
    # --late: the early requests' gaps during a late prompt's prefill, and
    # their steady gaps (after the last early first token, no prefill going on).
    late_during, late_steady = [], []
    if a.late and ok:
        late_windows = [(r.t_send, r.t_first) for r in ok if r.late]
        all_decoding = max(r.t_first for r in ok if not r.late)
        for r in ok:
            if r.late:
                continue
            for t_prev, t_next in zip(r.token_times, r.token_times[1:]):
                if t_prev < all_decoding:
                    continue
                if any(w[0] < t_next and w[1] > t_prev for w in late_windows):
                    late_during.append(t_next - t_prev)
                elif not any(w[0] < t_next and w[1] > t_prev for w in windows):
                    late_steady.append(t_next - t_prev)
    decode_tokens = sum(max(len(r.token_times) - 1, 0) for r in ok)
    if ok:
        span_start = min(r.t_first for r in ok)
        span_end = max(r.token_times[-1] for r in ok)
        # Time in which at least one request was decoding (union of [first, last]).
        iv = sorted((r.t_first, r.token_times[-1]) for r in ok)
        busy_s, cur_s, cur_e = 0.0, iv[0][0], iv[0][1]
        for s, e in iv[1:]:
            if s > cur_e:
                busy_s += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy_s += cur_e - cur_s
    else:
        span_start = span_end = busy_s = 0.0
    out = {
        "label": a.label,
        "url": a.url,
        "concurrency": a.concurrency,
        "requests_sent": len(results),
        "ok": len(ok),
        "refused": len(refused),
        "refused_statuses": sorted({r.status for r in refused}),
        "failed": len(failed),
        "aborted": len(aborted),
        "wall_s": round(wall, 2),
        "max_tokens": a.max_tokens,
        "kv_policy": a.kv_policy,
        "kv_budget": a.kv_budget,
        "prompt_tokens_mean": statistics.mean([r.prompt_tokens for r in ok if r.prompt_tokens] or [0]),
        "completion_tokens": sum(r.completion_tokens or 0 for r in ok),
        "client_decode_tok_s": round(decode_tokens / busy_s, 2) if busy_s > 0 else None,
        "ttft_p50_s": round(pct(ttft, 50), 3),
        "ttft_p95_s": round(pct(ttft, 95), 3),
        "itl_p50_ms": round(1000 * pct(itl_all, 50), 1),
        "itl_p95_ms": round(1000 * pct(itl_all, 95), 1),
        "itl_steady_p50_ms": round(1000 * pct(itl_steady, 50), 1),
        "itl_steady_n": len(itl_steady),
        "itl_during_prefill_p50_ms": round(1000 * pct(itl_during, 50), 1),
        "itl_during_prefill_p95_ms": round(1000 * pct(itl_during, 95), 1),
        "itl_during_prefill_n": len(itl_during),
        "peak_running": peak["running"],
        **({
            "itl_late_prefill_p50_ms": round(1000 * pct(late_during, 50), 1),
            "itl_late_prefill_p95_ms": round(1000 * pct(late_during, 95), 1),
            "itl_late_prefill_n": len(late_during),
            "itl_late_steady_p50_ms": round(1000 * pct(late_steady, 50), 1),
            "itl_late_steady_n": len(late_steady),
            "late_ttft_s": round(statistics.mean([r.t_first - r.t_send for r in ok if r.late] or [float("nan")]), 3),
        } if a.late else {}),
        "peak_queued": peak["queued"],
        "peak_kv_allocated_bytes": peak["kv_alloc"],
        "peak_kv_reserved_bytes": peak["kv_reserved"],
        "peak_rss_bytes": vm_hwm(a.pid) if a.pid else None,
    }
    dt = m1.get("lava_decode_seconds_total", 0) - m0.get("lava_decode_seconds_total", 0)
    dn = m1.get("lava_decode_tokens_total", 0) - m0.get("lava_decode_tokens_total", 0)
    pt = m1.get("lava_prefill_seconds_total", 0) - m0.get("lava_prefill_seconds_total", 0)
    pn = m1.get("lava_prefill_tokens_total", 0) - m0.get("lava_prefill_tokens_total", 0)
    if dt > 0:
        out["server_decode_tok_s"] = round(dn / dt, 2)
        out["server_decode_steps"] = m1.get("lava_decode_steps_total", 0) - m0.get("lava_decode_steps_total", 0)
    if pt > 0:
        out["server_prefill_tok_s"] = round(pn / pt, 2)
    if m1.get("lava_kv_allocated_bytes_peak") is not None:
        out["server_peak_kv_allocated_bytes"] = m1["lava_kv_allocated_bytes_peak"]
        out["server_peak_running"] = m1.get("lava_running_sequences_peak")
    out["decode_tok_s_by_batch"] = {str(b): round(v[0] / v[1], 1) for b, v in sorted(by_batch.items()) if v[1] > 0.5}
    if refused:
        out["refusal_example"] = refused[0].error
    if failed:
        out["failure_example"] = failed[0].error
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
