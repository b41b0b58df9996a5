#!/usr/bin/env bash
# guidellm (PyPI, unpatched) against quiver: a short benchmark of a served model through
# /v1/chat/completions (guidellm's default: streamed, with stream_options.continuous_usage_stats)
# that must finish with no errored request. guidellm installs torch and transformers (~6 GB),
# so it lives in its own venv (.gl/, git-ignored) and never in the test requirements.
#
# Usage: bench/guidellm/run.sh [QUIVER_BIN] [MODEL] [OUT_JSON]
#   MODEL: a model folder or a .gguf file (its tokenizer is written out by transformers with
#   $QV_PYTHON, which needs transformers and gguf); defaults: build/release/quiver,
#   ../shared/models/stories260K,
#   bench/results/guidellm-<model>-<date>.json
# Env: GUIDELLM_VERSION (0.8.1), REQUESTS (64), STREAMS (4), PROMPT_TOKENS (64),
#      OUTPUT_TOKENS (32).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-build/release/quiver}
model=${2:-../shared/models/stories260K}
name=$(basename "$model" .gguf)
out=${3:-bench/results/guidellm-$name-$(date -u +%Y-%m-%d).json}
ver=${GUIDELLM_VERSION:-0.8.1}
requests=${REQUESTS:-64}
streams=${STREAMS:-4}
ptok=${PROMPT_TOKENS:-64}
otok=${OUTPUT_TOKENS:-32}

have=$(.gl/bin/pip show guidellm 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ ! -x .gl/bin/guidellm ] || [ "$have" != "$ver" ]; then
  python3 -m venv .gl
  .gl/bin/pip install -q --disable-pip-version-check "guidellm==$ver"
fi

tmp=$(mktemp -d)
. bench/lib/serve.sh
trap 'kill $qv_pid 2>/dev/null; wait $qv_pid 2>/dev/null; rm -rf "$tmp"' EXIT
qv_serve_start "$bin" "$name" "$model"
port=$qv_port
tok=$(qv_hf_tokenizer "$model" "${QV_PYTHON:-python3}")

HF_HUB_OFFLINE=1 .gl/bin/guidellm run \
  --backend "kind=openai_http,target=http://127.0.0.1:$port,model=$name" \
  --profile "kind=concurrent,streams=$streams" \
  --constraint "kind=max_requests,count=$requests" \
  --data "kind=synthetic_text,prompt_tokens=$ptok,output_tokens=$otok" \
  --tokenizer "kind=huggingface_auto,model=$tok" \
  --output "kind=json,path=$tmp/guidellm.json" --disable-console-interactive >"$tmp/console.txt" 2>&1 ||
  { cat "$tmp/console.txt"; exit 1; }

# A summary with the machine, commit and settings; errored must be 0.
python3 - "$tmp/guidellm.json" "$out" "$ver" "$requests" "$streams" "$ptok" "$otok" "$model" <<'PY'
import json, os, platform, subprocess, sys
src, out, ver, requests, streams, ptok, otok, model = sys.argv[1:]
b = json.load(open(src))["benchmarks"][0]["metrics"]
def stat(k):
    v = b[k]["successful"] if isinstance(b.get(k), dict) and "successful" in b[k] else b.get(k)
    return {x: v.get(x) for x in ("mean", "median", "p95")} if isinstance(v, dict) else v
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
res = {"tool": "guidellm", "guidellm_version": ver, "commit": commit,
       "machine": {"cpu": cpu, "n_cpus": os.cpu_count(), "os": platform.platform(),
                   "loadavg": os.getloadavg()},
       "settings": {"model": model, "endpoint": "/v1/chat/completions (streamed)",
                    "profile": f"concurrent, {streams} streams", "requests": int(requests),
                    "prompt_tokens": int(ptok), "output_tokens": int(otok), "device": "cpu"},
       "request_totals": b["request_totals"],
       "requests_per_second": stat("requests_per_second"),
       "time_to_first_token_ms": stat("time_to_first_token_ms"),
       "inter_token_latency_ms": stat("inter_token_latency_ms"),
       "output_tokens_per_second": stat("output_tokens_per_second")}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res["request_totals"]))
sys.exit(0 if res["request_totals"]["errored"] == 0 and res["request_totals"]["incomplete"] == 0 else 1)
PY
echo "wrote $out"
