#!/usr/bin/env bash
# Side-by-side decode and prefill speed of lava and llama.cpp on the same GGUF
# file, same threads, measured in interleaved pairs (one llama.cpp measurement,
# then one lava measurement, repeated): this VM's speed drifts by 10-30% within
# minutes, so each ratio is the median of the pairs' ratios, with their min and max.
#
#   benches/llama_cpp_compare.sh --llama-bench /path/to/llama-bench \
#       --llama-quantize /path/to/llama-quantize [--dtype f32|q8_0|q4_1|q4_k_m] \
#       [--model SmolLM2-135M-Instruct.Q4_1.gguf] [--threads 2] [--pairs 3] \
#       [--depths 1024,4096,8192] [--prefill 2048] [--budget 128] [--kv-dtype f32|f16|q8_0] [--out DIR]
#
# llama.cpp is never built, vendored or downloaded here: bring a llama-bench and
# a llama-quantize built elsewhere. The file both programs read is the model
# itself when it already is of --dtype (the default model is Q4_1), else made from it by
# llama-quantize (--allow-requantize) into DIR/model-<dtype>.gguf.
#
# llama.cpp side: KV f16 (its default), best of flash attention off/on, weight
# repacking off (--repack 0, or -nr 1 on older builds; LLAMA_BENCH_EXTRA replaces
# these flags); decode (16 tokens) at each depth, prefill of --prefill tokens (2048).
# lava side: `lava bench --json` on the same file (--weights f32 for f32, native
# otherwise): the full cache and LAVa at --budget (128), decode at each depth (8192 is run
# at 8160 so the timed steps fit the 8k context), prefill of --prefill, K/V stored as
# --kv-dtype (default f32; llama.cpp keeps its f16 KV). Each lava decode figure is
# also given as a fraction of its bandwidth bound, read bandwidth (`lava bench`: all threads summing a 512 MiB array) / (weight bytes +
# KV bytes), with the bytes as held (quantized weights and KV counted as stored).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_BENCH="" QUANT="" DTYPE="f32" MODEL="" THREADS=2 PAIRS=3 DEPTHS="1024,4096,8192" PREFILL=2048 BUDGET=128 KV="f32" OUT="target/llama-cpp-compare"
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-bench) LLAMA_BENCH="$2"; shift 2 ;;
    --llama-quantize) QUANT="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --depths) DEPTHS="$2"; shift 2 ;;
    --prefill) PREFILL="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --kv-dtype) KV="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$LLAMA_BENCH" ] || { echo "--llama-bench must name an executable llama-bench built outside this repository" >&2; exit 2; }
case "$DTYPE" in
  f32) QTYPE=F32; WEIGHTS=f32 ;;
  q8_0) QTYPE=Q8_0; WEIGHTS=native ;;
  q4_1) QTYPE=Q4_1; WEIGHTS=native ;;
  q4_k_m) QTYPE=Q4_K_M; WEIGHTS=native ;;
  *) echo "--dtype must be f32, q8_0, q4_1 or q4_k_m (got $DTYPE)" >&2; exit 2 ;;
esac
case "$PAIRS" in ''|*[!0-9]*|0) echo "--pairs must be a positive integer" >&2; exit 2 ;; esac
case "$PREFILL" in ''|*[!0-9]*|0) echo "--prefill must be a positive token count" >&2; exit 2 ;; esac
case "$BUDGET" in ''|*[!0-9]*|0) echo "--budget must be a positive token count" >&2; exit 2 ;; esac
OUT="$OUT/$DTYPE-kv-$KV"
mkdir -p "$OUT"
LAVA=target/release/lava
[ -x "$LAVA" ] || cargo build --release
if [ -z "$MODEL" ]; then
  # The default model, fetched on first use.
  MODEL=$("$LAVA" generate --prompt hi --max-new-tokens 1 --json 2>&1 >/dev/null | sed -n 's/^lava: loaded \(.*\) in .*/\1/p' | head -1)
fi
[ -f "$MODEL" ] || { echo "model $MODEL not found (pass --model)" >&2; exit 2; }
if python3 - "$MODEL" "$DTYPE" <<'PY' 2>/dev/null
import sys
# A file already of the asked type is used as it is (the default model is Q4_1, the
# Gemma 3 and Qwen 1.5B files are Q4_K_M): general.file_type 0 F32, 3 Q4_1, 7 Q8_0, 15 Q4_K_M.
from gguf import GGUFReader
want = {"f32": 0, "q4_1": 3, "q8_0": 7, "q4_k_m": 15}[sys.argv[2]]
r = GGUFReader(sys.argv[1])
f = r.fields.get("general.file_type")
sys.exit(0 if f is not None and int(f.parts[f.data[0]][0]) == want else 1)
PY
then
  FILE="$MODEL"
else
  [ -x "$QUANT" ] || { echo "--llama-quantize must name an executable llama-quantize (to make the $QTYPE file)" >&2; exit 2; }
  FILE="$OUT/model-$DTYPE.gguf"
  [ -f "$FILE" ] || "$QUANT" --allow-requantize "$MODEL" "$FILE" "$QTYPE" >"$OUT/quantize.log" 2>&1
fi

# Weight repacking off: `--repack 0` in current llama-bench, `-nr 1` in older ones.
if "$LLAMA_BENCH" --help 2>&1 | grep -q -- '--repack'; then NO_REPACK="--repack 0"; else NO_REPACK="-nr 1"; fi
EXTRA=${LLAMA_BENCH_EXTRA-$NO_REPACK}
LAVA_LENGTHS=$(echo "$DEPTHS" | tr ',' '\n' | sed 's/^8192$/8160/' | paste -sd, -)
# lava bench prefills every length it decodes at; --prefill is added for the prefill row.
case ",$LAVA_LENGTHS," in *,$PREFILL,*) ;; *) LAVA_LENGTHS="$PREFILL,$LAVA_LENGTHS" ;; esac

echo "== $PAIRS interleaved pairs, $THREADS threads, $FILE (lava --weights $WEIGHTS)"
for i in $(seq 1 "$PAIRS"); do
  echo "-- pair $i: llama.cpp"
  # shellcheck disable=SC2086
  "$LLAMA_BENCH" -m "$FILE" -t "$THREADS" -p 0 -n 16 -d "$DEPTHS" -fa 0,1 -r 1 $EXTRA -o json >"$OUT/llama_decode_$i.json"
  # shellcheck disable=SC2086
  "$LLAMA_BENCH" -m "$FILE" -t "$THREADS" -p "$PREFILL" -n 0 -fa 0,1 -r 1 $EXTRA -o json >"$OUT/llama_prefill_$i.json"
  echo "-- pair $i: lava"
  RAYON_NUM_THREADS=$THREADS "$LAVA" bench --model "$FILE" --weights "$WEIGHTS" --lengths "$LAVA_LENGTHS" --policies lava \
    --budgets "$BUDGET" --runs 1 --decode-tokens 16 --kv-dtype "$KV" --json >"$OUT/lava_$i.json"
done

python3 - "$OUT" "$PAIRS" "$DEPTHS" "$DTYPE" "$PREFILL" "$BUDGET" <<'PY'
import json, statistics, sys
out, pairs, depths, dtype = sys.argv[1], int(sys.argv[2]), [int(d) for d in sys.argv[3].split(",")], sys.argv[4]
prefill, budget = int(sys.argv[5]), int(sys.argv[6])
rows = {}  # name -> list of (llama.cpp, lava) per pair
bound = {}  # name -> lava's fraction of its bandwidth bound, per pair
for i in range(1, pairs + 1):
    ld = json.load(open(f"{out}/llama_decode_{i}.json"))
    lp = json.load(open(f"{out}/llama_prefill_{i}.json"))
    lava = json.load(open(f"{out}/lava_{i}.json"))
    best_tg = {}
    for r in ld:
        d = r.get("n_depth", 0)
        best_tg[d] = max(best_tg.get(d, 0.0), r["avg_ts"])
    best_pp = max(r["avg_ts"] for r in lp)
    dec = {(r["context"], r["policy"]): r["tok_s"] for r in lava["decode"]}
    frac = {(r["context"], r["policy"]): r.get("bound_fraction") for r in lava["decode"]}
    pre = {(r["tokens"], r["policy"]): r for r in lava["prefill"]}
    for depth in depths:
        ctx = 8160 if depth == 8192 else depth
        for policy, label in [("full", "full"), ("lava", f"LAVa B={budget}")]:
            if depth in best_tg and (ctx, policy) in dec:
                rows.setdefault(f"decode at {depth}, {label}", []).append((best_tg[depth], dec[(ctx, policy)]))
                if frac.get((ctx, policy)) is not None:
                    bound.setdefault(f"decode at {depth}, {label}", []).append(frac[(ctx, policy)])
    p = pre.get((prefill, "full"))
    if p:
        rows.setdefault(f"prefill {prefill}, full", []).append((best_pp, prefill / p["seconds"]))
print(f"\n{dtype}: {pairs} interleaved pairs (tok/s medians; ratio lava / llama.cpp: median [min, max] of the pairs)")
print(f"{'':<26} {'llama.cpp':>10} {'lava':>8} {'ratio':>6} {'min':>6} {'max':>6} {'of bound':>9}")
for name, ps in rows.items():
    ratios = [b / a for a, b in ps]
    print(f"{name:<26} {statistics.median(a for a, _ in ps):>10.1f} {statistics.median(b for _, b in ps):>8.1f} "
          f"{statistics.median(ratios):>6.2f} {min(ratios):>6.2f} {max(ratios):>6.2f} "
          + (f"{100 * statistics.median(bound[name]):>8.0f}%" if name in bound else f"{'-':>9}"))
PY
