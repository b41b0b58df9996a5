# Shared by the external-client benchmarks (bench/guidellm/run.sh, bench/vllm/run.sh); sourced,
# not run. Needs $tmp (a scratch folder the caller removes).
qv_pid=""

# qv_hf_tokenizer MODEL PYTHON: prints a folder with a Hugging Face tokenizer for MODEL, which
# the clients need to count tokens: MODEL itself for a model folder; for a .gguf file, the
# tokenizer transformers reads out of the file, written under $tmp (PYTHON needs transformers
# and gguf).
qv_hf_tokenizer() {
  local model=$1 py=$2
  if [[ "$model" != *.gguf ]]; then echo "$model"; return; fi
  "$py" -c 'import sys, os
from transformers import AutoTokenizer
p = os.path.realpath(sys.argv[1])
AutoTokenizer.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p)).save_pretrained(sys.argv[2])' \
    "$model" "$tmp/tokenizer" >/dev/null 2>&1 || { echo "cannot read the tokenizer of $model" >&2; return 1; }
  echo "$tmp/tokenizer"
}

# qv_serve_start BIN NAME MODEL: starts `BIN serve` on a free loopback port serving MODEL as
# NAME; sets qv_pid and qv_port (the caller's trap kills qv_pid). Returns 1 if it did not start.
qv_serve_start() {
  local bin=$1 name=$2 model=$3 log=$tmp/serve.log
  "$bin" serve --host 127.0.0.1 --port 0 --model "$name=$model" >"$log" 2>&1 &
  qv_pid=$!
  qv_port=""
  for _ in $(seq 1 600); do
    qv_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
    [ -n "$qv_port" ] && return 0
    kill -0 "$qv_pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  echo "quiver did not start" >&2
  cat "$log" >&2
  return 1
}
