#!/usr/bin/env bash
# Side-by-side decode and prefill speed of lava and llama.cpp on the same model,
# both computing in f32, with the same thread count. Prints the ratios the
# performance targets of the README are stated in.
#
#   benches/llama_cpp_compare.sh --llama-bench /path/to/llama-bench \
#       [--llama-quantize /path/to/llama-quantize | --f32 model-f32.gguf] \
#       [--model SmolLM2-135M-Instruct.Q4_1.gguf] [--threads 2] [--out DIR]
#
# llama.cpp is never built, vendored or downloaded here: bring a llama-bench
# (and llama-quantize, to make the F32 file) built elsewhere. The F32 GGUF made
# by llama-quantize is the file both programs read.
#
# llama.cpp side: KV f16 (its default), best of flash attention off/on, weight
# repacking off (--repack 0, or -nr 1 on older builds; LLAMA_BENCH_EXTRA replaces
# these flags). Decode at depths 0, 1024, 4096, 8192; prefill 2048.
# lava side: `lava bench --json` on the same file, full cache and LAVa at 128.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_BENCH="" QUANT="" F32="" MODEL="" THREADS=2 OUT="target/llama-cpp-compare"
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-bench) LLAMA_BENCH="$2"; shift 2 ;;
    --llama-quantize) QUANT="$2"; shift 2 ;;
    --f32) F32="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$LLAMA_BENCH" ] || { echo "--llama-bench must name an executable llama-bench built outside this repository" >&2; exit 2; }
mkdir -p "$OUT"
LAVA=target/release/lava
[ -x "$LAVA" ] || cargo build --release
if [ -z "$MODEL" ]; then
  # The default model, fetched on first use.
  MODEL=$("$LAVA" generate --prompt hi --max-new-tokens 1 --json 2>&1 >/dev/null | sed -n 's/^lava: loaded \(.*\) in .*/\1/p' | head -1)
fi
[ -f "$MODEL" ] || { echo "model $MODEL not found (pass --model)" >&2; exit 2; }
if [ -z "$F32" ]; then
  [ -x "$QUANT" ] || { echo "give --f32 FILE or --llama-quantize PATH to make the F32 file" >&2; exit 2; }
  F32="$OUT/model-f32.gguf"
  [ -f "$F32" ] || "$QUANT" --allow-requantize "$MODEL" "$F32" F32 >"$OUT/quantize.log" 2>&1
fi

echo "== llama.cpp ($LLAMA_BENCH), $THREADS threads, $F32"
# Weight repacking off: `--repack 0` in current llama-bench, `-nr 1` in older ones.
if "$LLAMA_BENCH" --help 2>&1 | grep -q -- '--repack'; then NO_REPACK="--repack 0"; else NO_REPACK="-nr 1"; fi
EXTRA=${LLAMA_BENCH_EXTRA-$NO_REPACK}
# shellcheck disable=SC2086
"$LLAMA_BENCH" -m "$F32" -t "$THREADS" -p 0 -n 32 -d 0,1024,4096,8192 -fa 0,1 -r 3 $EXTRA -o json >"$OUT/llama_decode.json"
# shellcheck disable=SC2086
"$LLAMA_BENCH" -m "$F32" -t "$THREADS" -p 2048 -n 0 -fa 0,1 -r 3 $EXTRA -o json >"$OUT/llama_prefill.json"

echo "== lava ($LAVA bench), flex backend, $THREADS threads"
RAYON_NUM_THREADS=$THREADS "$LAVA" bench --model "$F32" --lengths 1024,2048,4096,8160 --policies lava --budgets 128 \
  --runs 3 --decode-tokens 16 --json >"$OUT/lava.json"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ld = json.load(open(f"{out}/llama_decode.json"))
lp = json.load(open(f"{out}/llama_prefill.json"))
lava = json.load(open(f"{out}/lava.json"))
best_tg = {}
for r in ld:
    d = r.get("n_depth", 0)
    best_tg[d] = max(best_tg.get(d, 0.0), r["avg_ts"])
best_pp = max(r["avg_ts"] for r in lp)
dec = {(r["context"], r["policy"]): r["tok_s"] for r in lava["decode"]}
pre = {(r["tokens"], r["policy"]): r for r in lava["prefill"]}
print(f"\nbandwidth (triad) {lava.get('bandwidth_gb_s') or 0:.1f} GB/s, threads {lava['threads']}")
print(f"{'context':>8} {'llama.cpp':>10} {'lava full':>10} {'ratio':>6} {'lava B=128':>11} {'ratio':>6}")
# lava decodes at 8160 (8192 minus the timed steps fits the 8k context).
for lava_ctx, depth in [(1024, 1024), (4096, 4096), (8160, 8192)]:
    ref = best_tg.get(depth)
    full = dec.get((lava_ctx, "full"))
    comp = dec.get((lava_ctx, "lava"))
    if ref and full and comp:
        print(f"{lava_ctx:>8} {ref:>10.1f} {full:>10.1f} {full/ref:>6.2f} {comp:>11.1f} {comp/ref:>6.2f}")
if 0 in best_tg:
    print(f"llama.cpp decode at depth 0: {best_tg[0]:.1f} tok/s")
p = pre.get((2048, "full"))
if p:
    tok_s = 2048 / p["seconds"]
    print(f"prefill 2048: llama.cpp {best_pp:.1f} tok/s, lava {tok_s:.1f} tok/s, ratio {tok_s/best_pp:.2f}")
l1, l8 = dec.get((1024, "lava")), dec.get((8160, "lava"))
if l1 and l8:
    print(f"lava B=128 decode 8k / 1k: {l8/l1:.2f}")
PY
