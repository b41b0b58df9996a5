#!/usr/bin/env bash
# vLLM's own benchmark client (`vllm bench serve`, unpatched) against quiver: N prompts of the
# random dataset (token ids drawn uniformly from the vocabulary and decoded, so prompts hold
# any byte token, <0x00> included) through /v1/completions; every request must succeed. vLLM is
# not a test dependency: point VLLM at an existing `vllm` binary.
#
# Usage: bench/vllm/run.sh [QUIVER_BIN] [MODEL] [OUT_JSON]
#   MODEL: a model directory or a .gguf file (default ../shared/models/stories260K); for a GGUF
#   the Hugging Face tokenizer vLLM's client needs is written from the file by transformers
#   (QV_PYTHON, which needs transformers and gguf).
#   defaults: build/release/quiver, bench/results/vllm-bench-serve-<model>-<date>.json
# Env: VLLM (/work/vllmenv/bin/vllm), QV_PYTHON (python3), PROMPTS (100), INPUT_LEN (128),
#      OUTPUT_LEN (32), CONCURRENCY (8), ENDPOINT (completions | chat).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-build/release/quiver}
model=${2:-../shared/models/stories260K}
name=$(basename "$model" .gguf)
out=${3:-bench/results/vllm-bench-serve-$name-$(date -u +%Y-%m-%d).json}
vllm=${VLLM:-/work/vllmenv/bin/vllm}
py=${QV_PYTHON:-python3}
prompts=${PROMPTS:-100}
ilen=${INPUT_LEN:-128}
olen=${OUTPUT_LEN:-32}
conc=${CONCURRENCY:-8}
endpoint=${ENDPOINT:-completions}

tmp=$(mktemp -d)
. bench/lib/serve.sh
trap 'kill $qv_pid 2>/dev/null; wait $qv_pid 2>/dev/null; rm -rf "$tmp"' EXIT
qv_serve_start "$bin" "$name" "$model"
port=$qv_port
tok=$(qv_hf_tokenizer "$model" "$py")

if [ "$endpoint" = chat ]; then backend=(--backend openai-chat --endpoint /v1/chat/completions)
else backend=(--backend openai --endpoint /v1/completions); fi
HF_HUB_OFFLINE=1 "$vllm" bench serve "${backend[@]}" --base-url "http://127.0.0.1:$port" \
  --model "$name" --tokenizer "$tok" --dataset-name random --num-prompts "$prompts" \
  --random-input-len "$ilen" --random-output-len "$olen" --max-concurrency "$conc" \
  --seed 1 --ignore-eos --save-result --result-dir "$tmp" --result-filename vllm.json \
  >"$tmp/console.txt" 2>&1 || { tail -40 "$tmp/console.txt"; exit 1; }

# A summary with the machine, commit, settings and load; failed must be 0.
"$py" - "$tmp/vllm.json" "$out" "$model" "$endpoint" "$prompts" "$ilen" "$olen" "$conc" "$("$(dirname "$vllm")/python" -c "import importlib.metadata as m; print(m.version('vllm'))" 2>/dev/null || true)" <<'PY'
import json, os, platform, subprocess, sys
src, out, model, endpoint, prompts, ilen, olen, conc, ver = sys.argv[1:]
r = json.load(open(src))
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
keys = ["completed", "failed", "total_input_tokens", "total_output_tokens", "duration",
        "request_throughput", "output_throughput", "total_token_throughput",
        "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
        "p99_itl_ms"]
doc = {"tool": "vllm bench serve", "vllm_version": ver or None, "commit": commit,
       "machine": {"cpu": platform.processor() or platform.machine(), "n_cpus": os.cpu_count(),
                   "os": platform.platform(), "loadavg": os.getloadavg()},
       "settings": {"model": model, "endpoint": "/v1/" + ("chat/completions" if endpoint == "chat" else "completions"),
                    "dataset": "random", "num_prompts": int(prompts), "random_input_len": int(ilen),
                    "random_output_len": int(olen), "max_concurrency": int(conc), "seed": 1,
                    "ignore_eos": True, "device": "cpu"},
       "results": {k: r.get(k) for k in keys},
       "errors": sorted({e for e in r.get("errors", []) if e})[:5]}
json.dump(doc, open(out, "w"), indent=1)
print(json.dumps(doc["results"]))
sys.exit(0 if r.get("failed", 1) == 0 and r.get("completed") == int(prompts) else 1)
PY
