#!/usr/bin/env bash
# Builds, on a machine with no GPU, everything scripts/gpu-check.sh runs on a lent
# GPU machine, which reaches no network (no crates registry, no PyPI) and
# receives only the working tree plus at most 64 MiB of named paths:
#
#   KIT/kit.tar.xz          holding:
#     bin/lava              the lava binary built with --features cuda (it also runs
#                           flex and ndarray, and loads CUDA's libraries only when
#                           --backend cuda asks for them)
#     tests-cuda/*          lava-cache's test binaries on burn-cuda (cargo test --no-run
#                           -p lava-cache --features cuda, the executables copied out)
#     tests-ndarray/*       the same tests on burn-ndarray, for the rehearsal
#   KIT/MANIFEST            commit, build date, each file's size and SHA-256
#
# Binaries are stripped and packed into one xz stream (they share most of their code:
# one 51 MB binary alone is 9 MB packed, and the rest adds little), and the kit is
# checked against the 64 MiB carry limit together with the tracked tree. Speed is measured on synthetic models
# (`--model synthetic:NAME`), so no model file travels.
#
#   scripts/gpu-prepare.sh [--rehearsal] [KIT]        (KIT default: gpu-kit, ignored by git)
#
# --rehearsal builds only what the CPU rehearsal runs (lava without CUDA, the ndarray
# tests), from the workspace's own test build: what CI does after its tests, in seconds.
#
# Then, on the GPU machine (device `run` with carry ["gpu-kit"]):
#   scripts/gpu-check.sh --kit gpu-kit --out "$OUT"
# and here, as a rehearsal with no network:
#   unshare -rn scripts/gpu-check.sh --kit gpu-kit --backend flex --rehearsal
set -euo pipefail
cd "$(dirname "$0")/.."
REHEARSAL=0
if [ "${1:-}" = --rehearsal ]; then REHEARSAL=1; shift; fi
KIT=${1:-gpu-kit}
LIMIT=$((64 * 1024 * 1024))

command -v cargo >/dev/null || { echo "gpu-prepare: cargo is missing (install the Rust toolchain)" >&2; exit 1; }
tmp="$KIT.tmp-$$"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/tests-cuda" "$tmp/tests-ndarray"
trap 'rm -rf "$tmp" "$tmp.packed"' EXIT

if [ $REHEARSAL = 1 ]; then
  echo "== lava (no CUDA: the rehearsal's kit)"
  cargo build --release --locked --bin lava
else
  echo "== lava --features cuda"
  cargo build --release --locked --features cuda --bin lava
fi
cp "${CARGO_TARGET_DIR:-target}/release/lava" "$tmp/bin/lava"

# The test executables cargo builds for a package, one per line (from its JSON messages).
test_executables() {
  cargo test --release --locked --no-run --message-format json "$@" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])
'
}
# lava-cache's integration tests (its src/ unit tests need no backend of their own).
keep() { grep '/deps/[a-z_]*-[0-9a-f]\{16\}$' | grep -v '/deps/lava_cache-'; }
if [ $REHEARSAL = 0 ]; then
  echo "== lava-cache tests on burn-cuda (--no-run)"
  for exe in $(test_executables -p lava-cache --features cuda --tests | keep); do cp "$exe" "$tmp/tests-cuda/$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')"; done
fi
# The rehearsal takes them from the workspace's test build (nothing to build after `cargo
# test --workspace`); the full kit builds lava-cache's alone (the workspace's would relink lava
# without CUDA).
if [ $REHEARSAL = 1 ]; then scope=(--workspace); else scope=(-p lava-cache); fi
echo "== lava-cache tests on burn-ndarray (--no-run)"
for exe in $(test_executables "${scope[@]}" --tests | grep -F "$(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "lava-cache":
        for t in p["targets"]:
            if t["kind"] == ["test"]:
                print("/deps/" + t["name"].replace("-", "_") + "-")
')" | keep); do cp "$exe" "$tmp/tests-ndarray/$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')"; done
# Some tests read data beside their sources (Python oracles are skipped without python3's
# packages); they run from the tree, which travels, so nothing else is copied.

strip "$tmp"/bin/* "$tmp"/tests-cuda/* "$tmp"/tests-ndarray/* 2>/dev/null || true

{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%FT%TZ) on $(uname -m), $(rustc --version)"
  (cd "$tmp" && find . -type f ! -name MANIFEST | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
  done)
} >"$tmp/MANIFEST"

echo "== packing (xz -9)"
mkdir -p "$tmp.packed"
mv "$tmp/MANIFEST" "$tmp.packed/MANIFEST"
if command -v xz >/dev/null; then
  tar -C "$tmp" -cf - . | xz -T2 -9 >"$tmp.packed/kit.tar.xz"
else # Python's lzma writes the same format
  tar -C "$tmp" -cf - . | python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read(), preset=9))' >"$tmp.packed/kit.tar.xz"
fi
rm -rf "$tmp" "$KIT"
mv "$tmp.packed" "$KIT"
trap - EXIT
kit_bytes=$(du -sb "$KIT" | cut -f1)
tree_bytes=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
total=$((kit_bytes + tree_bytes))
cat "$KIT/MANIFEST"
awk -v k="$kit_bytes" -v t="$tree_bytes" 'BEGIN { m = 1048576; printf "kit %d bytes (%.1f MiB) + tracked tree %d bytes (%.1f MiB) = %.1f MiB of the 64 MiB carry limit\n", k, k / m, t, t / m, (k + t) / m }'
if [ "$total" -gt "$LIMIT" ]; then
  echo "gpu-prepare: the kit and the tree come to $total bytes, over the 64 MiB a GPU machine receives" >&2
  exit 1
fi
