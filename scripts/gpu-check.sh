#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (CI has none): builds with
# --features cuda, runs the golden-value checks and the cache's test suite on
# the CUDA backend, then `lava bench --quick` on CUDA, and writes everything to
# one results file. Sized for a short GPU lease (about 5 minutes with a warm
# cargo cache; the first build of burn-cuda takes longer).
#
#   scripts/gpu-check.sh [RESULTS_FILE]     (default: target/gpu-check.txt)
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-target/gpu-check.txt}
mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"
fail=0
log() { echo "$*" | tee -a "$RESULTS"; }
step() {
  local name=$1; shift
  log "== $name"
  local t0; t0=$(date +%s)
  if "$@" >>"$RESULTS" 2>&1; then log "   ok ($(( $(date +%s) - t0 )) s)"; else log "   FAILED ($(( $(date +%s) - t0 )) s)"; fail=1; fi
}

log "gpu-check $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$RESULTS" 2>&1 || log "nvidia-smi not found"

step "build --features cuda" cargo build --release --features cuda
LAVA=target/release/lava
export LAVA_HOME=${LAVA_HOME:-$HOME/.cache/lava}

# Golden values (the same as tests/real_model.rs checks on the CPU backends).
golden() {
  local out
  out=$("$LAVA" ppl --backend cuda --json --text-file <(printf 'The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and children were playing.')) || return 1
  echo "$out"
  python3 -c 'import json,sys; v=json.loads(sys.argv[1]); nll=v["nll"]; print("mean NLL", nll); sys.exit(0 if abs(nll-3.023)<0.005 else 1)' "$out"
}
step "golden NLL on CUDA (3.023 +- 0.005)" golden
paris() {
  local out
  out=$("$LAVA" generate --backend cuda --chat --prompt "What is the capital of France?" --max-new-tokens 16 --json) || return 1
  echo "$out"
  grep -q Paris <<<"$out"
}
step "chat answer on CUDA contains Paris" paris
lava_generate() {
  "$LAVA" generate --backend cuda --policy lava --budget 128 --prompt-file <(for _ in $(seq 60); do cat README.md; done | head -c 12000) --max-new-tokens 8 --json
}
step "LAVa B=128 generate on CUDA (long prompt)" lava_generate

step "lava-cache test suite on CUDA" cargo test --release --features cuda -p lava-cache
step "lava bench --quick on CUDA" "$LAVA" bench --quick --backend cuda --no-bandwidth

log "== done: $([ $fail = 0 ] && echo all passed || echo SOME FAILED); results in $RESULTS"
exit $fail
