#!/usr/bin/env bash
# The load benchmark of `lava serve` (benches/serve_load.py) in the runs the
# README's table reports, each against a fresh server on a loopback port:
#   1. capacity at --kv-memory 1GiB: 16 clients with ~4k-token documents, for
#      `full` and `lava` at 128, aborted after --probe seconds (admitted vs queued);
#   2. decode throughput with the batch full: 16 conversations under lava/128,
#      5 under full (all it admits), and one conversation alone, each
#      generating 320 tokens (ignore_eos), at --prefill-chunk 256;
#   3. inter-token latency of 7 running conversations (lava/128) while an 8th
#      4k prompt arrives and prefills (serve_load.py --late 1), at
#      --prefill-chunk 32, 64 and 256: the late prompt's time to first token
#      is what the chunk size costs the prefill.
# Set ONLY=label,label to run some of them, and SERVER_FLAGS="--weights native" (say)
# to pass more flags to every server.
# Usage: benches/serve_compare.sh OUT.jsonl [LAVA_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benches/serve_compare.sh OUT.jsonl [LAVA_BINARY]}
lava=${2:-target/release/lava}
probe=${PROBE:-60}
docs=${DOCS:-../shared/data/paulgraham_essays}

run() { # label, server flags..., --, bench flags...
  local label=$1; shift
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$label,"* ]]; then return; fi
  local sflags=() ; while [ "$1" != "--" ]; do sflags+=("$1"); shift; done; shift
  local log; log=$(mktemp)
  # shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
  "$lava" serve --port 0 "${sflags[@]}" ${SERVER_FLAGS:-} 2>"$log" &
  local pid=$!
  local addr=""
  for _ in $(seq 1 600); do
    addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [ -n "$addr" ] && break
    sleep 0.2
  done
  [ -n "$addr" ] || { cat "$log" >&2; kill "$pid"; exit 1; }
  echo "== $label ${SERVER_FLAGS:-} (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  python3 benches/serve_load.py --url "$addr" --docs "$docs" --pid "$pid" --label "$label" --json "$out" "$@"
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$log"
}

run capacity-full --kv-memory 1GiB -- --concurrency 16 --requests 16 --max-tokens 64 --abort-after "$probe"
run capacity-lava128 --kv-memory 1GiB -- --concurrency 16 --requests 16 --max-tokens 64 --kv-policy lava --kv-budget 128 --abort-after "$probe"
run solo-lava128 --kv-memory 1GiB -- --concurrency 1 --requests 1 --max-tokens 320 --ignore-eos --kv-policy lava --kv-budget 128
run decode-full-5 --kv-memory 1GiB -- --concurrency 5 --requests 5 --max-tokens 256 --ignore-eos
run decode-lava128-16 --kv-memory 1GiB -- --concurrency 16 --requests 16 --max-tokens 320 --ignore-eos --kv-policy lava --kv-budget 128
run late-lava128-chunk32 --kv-memory 1GiB --prefill-chunk 32 -- --concurrency 8 --requests 8 --late 1 --late-delay 5 --max-tokens 1024 --late-max-tokens 32 --ignore-eos --kv-policy lava --kv-budget 128
run late-lava128-chunk64 --kv-memory 1GiB --prefill-chunk 64 -- --concurrency 8 --requests 8 --late 1 --late-delay 5 --max-tokens 1024 --late-max-tokens 32 --ignore-eos --kv-policy lava --kv-budget 128
run late-lava128-chunk256 --kv-memory 1GiB --prefill-chunk 256 -- --concurrency 8 --requests 8 --late 1 --late-delay 5 --max-tokens 1024 --late-max-tokens 32 --ignore-eos --kv-policy lava --kv-budget 128
