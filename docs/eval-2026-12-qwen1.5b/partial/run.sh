#!/bin/bash
# Issue 34's evaluation of Qwen2.5-Coder-1.5B, shard after shard; resumable: rerun this script
# (each shard skips the cells already in its results file). See /work/wt-evalrun/RESUME.md.
set -u
cd /work/wt-evalrun
export LAVA_HOME=/work/lava-home
N=8
OUT=results/qwen1.5b
for k in $(seq 0 $((N - 1))); do
  echo "$(date -u +%FT%TZ) shard $k/$N start" >> $OUT/log.txt
  nice -n 19 ./target/release/lava eval all --preset qwen1.5b --model qwen2.5-coder-1.5b --shard $k/$N --quiet \
    --results $OUT/shard-$k-of-$N.jsonl --out $OUT/out-shard-$k > $OUT/report-shard-$k.md 2>> $OUT/log.txt
  echo "$(date -u +%FT%TZ) shard $k/$N exit $?" >> $OUT/log.txt
done
