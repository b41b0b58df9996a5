#!/usr/bin/env bash
# Measures quiver serving stories260K over HTTP (quiver-bench against a live `quiver serve`) and
# the same workload offline (`quiver bench engine`, the reference measured in the same session),
# and writes both result files to bench/results/. Usage (after ./scripts/build release):
#   bench/serve-vs-engine.sh [BUILD_DIR] [MODEL_DIR]
# Settings: 200 prompts of 128 random tokens, 128 output tokens each (EOS ignored), at most 16
# in flight (the engine run uses 16 running sequences to match).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
model=${2:-${QV_SHARED_DIR:-../shared}/models/stories260K}
port=${QV_BENCH_PORT:-18200}
commit=$(git rev-parse --short HEAD)
date=$(date -u +%Y-%m-%d)
machine="$(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
meta=(--metadata "commit=$commit" --metadata "machine=$machine")

"$build/quiver" serve --model "$model" --host 127.0.0.1 --port "$port" >/tmp/quiver-serve-$port.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
"$build/quiver-bench" --base-url "http://127.0.0.1:$port" --dataset random --input-len 128 --output-len 128 \
  --num-prompts 200 --max-concurrency 16 --ignore-eos --warmup 16 --seed 0 --percentiles 50,90,99 \
  --no-progress "${meta[@]}" --metadata "load_avg=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --result-file "bench/results/$date-serve-cpu-stories260K.json"
kill $server
wait $server 2>/dev/null || true
trap - EXIT
"$build/quiver" bench engine --model "$model" --device cpu --num-prompts 200 --input-len 128 --output-len 128 \
  --max-num-seqs 16 --runs 3 "${meta[@]}" --metadata "load_avg=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --result-file "bench/results/$date-engine-cpu-stories260K-16seqs.json"
