#!/usr/bin/env bash
# The one prepared check for a lent GPU machine, which has no network, no cargo
# and no model files: it runs only what scripts/gpu-prepare.sh put in the kit
# and the tracked tree, and measures speed on synthetic models (a real model's
# shapes and block formats with random weights made in memory). Sized for under
# 8 minutes of device time; every step has its own time limit, and everything
# goes to one results file.
#
#   scripts/gpu-check.sh [--kit DIR] [--out DIR] [--backend cuda|flex|ndarray] [--rehearsal]
#
#   --kit DIR      the prepared folder (default gpu-kit)
#   --out DIR      where gpu-check.txt goes (default: $OUT when set, else target)
#   --backend B    the backend under test (default cuda); flex or ndarray rehearse the
#                  script on the CPU (the test step then runs the kit's ndarray tests)
#   --rehearsal    the CPU-sized variant: the speed step on synthetic:tiny at 512 and
#                  1024 tokens instead of synthetic:qwen2.5-coder-1.5b at 4k and 16k
#
# Steps:
#   1. the machine: nvidia-smi, CPU, the kit's manifest;
#   2. lava-cache's test suite on the backend (the kit's test binaries);
#   3. backends against each other: `lava generate --trace` on synthetic:tiny (f32
#      weights) with the full cache and with LAVa at budget 64, on the backend and on
#      ndarray; the generated tokens must agree (until a near tie: top-2 gap under the
#      tolerance), every step's logits within TOL (2e-2 absolute, logits of magnitude
#      about 1-10: TF32 matrix products on CUDA are allowed), and LAVa's kept positions
#      identical in at least 99% of (layer, head, position) slots (exact on the CPU);
#   4. speed: `lava bench` on the synthetic model, full cache and LAVa at budget 256,
#      batch 1 and 16, one JSON line per length.
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=gpu-kit
OUTDIR=${OUT:-target}
BACKEND=cuda
REHEARSAL=0
while [ $# -gt 0 ]; do
  case $1 in
    --kit) KIT=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --rehearsal) REHEARSAL=1; shift ;;
    *) echo "gpu-check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
case $BACKEND in cuda | flex | ndarray) ;; *) echo "gpu-check: --backend takes cuda, flex or ndarray, not $BACKEND" >&2; exit 2 ;; esac
[ -f "$KIT/kit.tar.xz" ] || { echo "gpu-check: $KIT/kit.tar.xz is missing: run scripts/gpu-prepare.sh $KIT first (on a machine with cargo)" >&2; exit 2; }
mkdir -p "$OUTDIR"
RESULTS=$OUTDIR/gpu-check.txt
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Unpack the kit (xz, or Python's lzma where xz is missing).
mkdir -p "$WORK/kit"
if command -v xz >/dev/null; then
  xz -dc "$KIT/kit.tar.xz" | tar -C "$WORK/kit" -xf - || { echo "gpu-check: cannot unpack $KIT/kit.tar.xz" >&2; exit 2; }
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$KIT/kit.tar.xz" "$WORK/kit" || exit 2
fi
cp "$KIT/MANIFEST" "$WORK/kit/MANIFEST"
KIT=$WORK/kit
LAVA=$KIT/bin/lava
: >"$RESULTS"
fail=0
log() { echo "$*" | tee -a "$RESULTS"; }
# step NAME SECONDS CMD...: runs CMD with a time limit, its output into the results.
step() {
  local name=$1 limit=$2; shift 2
  log "== $name (limit ${limit}s)"
  local t0 rc; t0=$(date +%s)
  # A shell function runs under timeout through bash -c (the functions are exported).
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >>"$RESULTS" 2>&1; rc=$?
  if [ $rc = 0 ]; then log "   ok ($(( $(date +%s) - t0 )) s)"
  else log "   FAILED (exit $rc$([ $rc = 124 ] && echo ', time limit'), $(( $(date +%s) - t0 )) s)"; fail=1; fi
}

# CUDA's libraries (libcuda, libnvrtc) are loaded at run time: point the loader at the toolkit.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LAVA_HOME=$WORK/lava-home # nothing is fetched: a model name would fail here, loudly

log "gpu-check $(date -u +%FT%TZ) backend=$BACKEND rehearsal=$REHEARSAL tree=$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
  echo "kit manifest:"; cat "$KIT/MANIFEST"
} >>"$RESULTS" 2>&1

# 2. The cache's test suite on the backend.
if [ "$BACKEND" = cuda ]; then TESTS=$KIT/tests-cuda; else TESTS=$KIT/tests-ndarray; fi
run_tests() {
  local ok=0 t
  shopt -s nullglob
  local all=("$TESTS"/*)
  [ ${#all[@]} -gt 0 ] || { echo "no test binaries in $TESTS: rerun scripts/gpu-prepare.sh"; return 1; }
  for t in "${all[@]}"; do
    # Run where cargo runs them: in the package's folder.
    local exe out rc
    exe=$(realpath "$t")
    echo "-- $(basename "$t")"
    out=$(cd crates/lava-cache && "$exe" -q 2>&1); rc=$?
    echo "$out" | tail -n 3
    [ $rc = 0 ] || ok=1
  done
  return $ok
}
export LAVA TESTS WORK BACKEND
export -f run_tests
step "lava-cache test suite ($(basename "$TESTS"))" 150 run_tests

# 3. The backend against ndarray on the tiny synthetic model.
printf 'The quick brown fox jumps over the lazy dog; %.0s' $(seq 40) >"$WORK/prompt.txt"
trace() { # trace BACKEND POLICY FILE
  local policy=()
  [ "$2" = full ] || policy=(--policy "$2" --budget 64)
  "$LAVA" generate --model synthetic:tiny --weights f32 --backend "$1" "${policy[@]}" \
    --prompt-file "$WORK/prompt.txt" --max-new-tokens 12 --json --trace "$3"
}
compare() { # compare A.json B.json
  python3 - "$1" "$2" <<'PY'
import json, sys
TOL = 2e-2
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["prompt"] == b["prompt"], "the two runs saw different prompts"
worst, steps = 0.0, 0
for i, (sa, sb) in enumerate(zip(a["steps"], b["steps"])):
    la, lb = sa["logits"], sb["logits"]
    worst = max(worst, max(abs(x - y) for x, y in zip(la, lb)))
    steps += 1
    ta, tb = a["tokens"][i] if i < len(a["tokens"]) else None, b["tokens"][i] if i < len(b["tokens"]) else None
    if ta != tb:
        top = sorted(lb, reverse=True)
        if top[0] - top[1] < TOL:
            print(f"tokens part at step {i} on a near tie (top-2 gap {top[0] - top[1]:.2e}); compared up to there")
            break
        sys.exit(f"FAIL: step {i}: token {ta} against {tb}, not a near tie (top-2 gap {top[0] - top[1]:.3f})")
print(f"logits: {steps} steps, max |difference| {worst:.2e} (tolerance {TOL})")
if worst > TOL:
    sys.exit("FAIL: logits differ by more than the tolerance")
if a["kept"] is not None:
    slots = same = 0
    for la, lb in zip(a["kept"], b["kept"]):
        for ha, hb in zip(la, lb):
            sa, sb = set(ha), set(hb)
            slots += max(len(sa), len(sb))
            same += len(sa & sb)
    print(f"kept positions: {same} of {slots} identical ({100.0 * same / max(slots, 1):.2f}%)")
    if same < 0.99 * slots:
        sys.exit("FAIL: the kept positions differ in more than 1% of the slots")
PY
}
cross_check() {
  local p rc=0
  for p in full lava; do
    echo "-- $p: $BACKEND against ndarray"
    trace "$BACKEND" "$p" "$WORK/$p-$BACKEND.json" >/dev/null || return 1
    trace ndarray "$p" "$WORK/$p-ndarray.json" >/dev/null || return 1
    compare "$WORK/$p-ndarray.json" "$WORK/$p-$BACKEND.json" || rc=1
  done
  return $rc
}
export -f trace compare cross_check
step "synthetic:tiny, $BACKEND against ndarray (logits, tokens, LAVa's kept positions)" 90 cross_check

# 4. Speed on the synthetic model.
if [ $REHEARSAL = 1 ]; then MODEL=synthetic:tiny; LENGTHS=(512 1024); else MODEL=synthetic:qwen2.5-coder-1.5b; LENGTHS=(4096 16384); fi
bench() { # bench LENGTH
  "$LAVA" bench --model "$MODEL" --backend "$BACKEND" --lengths "$1" --policies lava --budgets 256 \
    --batch 1,16 --runs 1 --decode-tokens 8 --no-bandwidth --json
}
export MODEL
export -f bench
for len in "${LENGTHS[@]}"; do
  step "lava bench $MODEL at $len tokens: full and LAVa-256, batch 1 and 16" 150 bench "$len"
done

log "== done: $([ $fail = 0 ] && echo 'all passed' || echo 'SOME FAILED'); results in $RESULTS"
exit $fail
