#!/usr/bin/env bash
# Runs qv-bench-tokenizer on the Llama 2, Llama 3-style, Qwen2-style and Phi-2 tokenizers, in
# document and per-line modes, against the Hugging Face `tokenizers` library in the same run,
# and writes bench/results/tokenizer-<date>.json (machine, commit, settings, every result).
#   QV_PYTHON  Python with `tokenizers` installed (default python3)
#   QV_BUILD   build folder holding qv-bench-tokenizer (default build/release)
#   ITERS      iterations per measurement (median reported; default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${QV_PYTHON:-python3}
build=${QV_BUILD:-build/release}
iters=${ITERS:-5}
shared=${QV_SHARED_DIR:-../shared}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export QV_SOURCE_DIR=$PWD

# Bench text: the committed test corpus (mixed languages, code, emoji), five times over (~1 MB).
"$py" - "$tmp" <<'PY'
import json, os, sys
tmp = sys.argv[1]
lines = [json.loads(l) for l in open("tests/fixtures/tokenizers/corpus.jsonl", encoding="utf-8")]
open(os.path.join(tmp, "text.txt"), "w", encoding="utf-8").write("\n".join(lines) * 5)
# A Llama 3-style tokenizer with a real 50K vocabulary: Phi-2's vocabulary and merges with Llama 3's
# pre-tokenizer regex and ignore_merges (the real Llama 3 file is not available offline).
j = json.load(open(os.path.join(os.environ.get("QV_SHARED_DIR", "../shared"), "data/tokenizers/phi-2.tokenizer.json"), encoding="utf-8"))
j["model"]["ignore_merges"] = True
j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
json.dump(j, open(os.path.join(tmp, "llama3-regex-50k.json"), "w", encoding="utf-8"))
PY

run() { # label tokenizer mode
  local extra=()
  [ "$3" = lines ] && extra=(--lines)
  "$build/qv-bench-tokenizer" --label "$1" --tokenizer "$2" --text "$tmp/text.txt" --iters "$iters" \
    --python "$py" "${extra[@]}"
}
{
  for mode in document lines; do
    run llama2 "$shared/data/tokenizers/llama2.tokenizer.json" $mode
    run llama3-regex-50k "$tmp/llama3-regex-50k.json" $mode
    run llama3-style-2.5k tests/fixtures/tokenizers/llama3-style/tokenizer.json $mode
    run qwen2-style tests/fixtures/tokenizers/qwen2-style/tokenizer.json $mode
    run phi-2 "$shared/data/tokenizers/phi-2.tokenizer.json" $mode
  done
} > "$tmp/results.jsonl"

out=bench/results/tokenizer-$(date -u +%Y-%m-%d).json
"$py" - "$tmp/results.jsonl" "$out" "$iters" <<'PY'
import json, os, platform, subprocess, sys
text = open(sys.argv[1]).read()
results, dec = [], json.JSONDecoder()
i = 0
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    obj, i = dec.raw_decode(text, i)
    obj["tokenizer"] = os.path.basename(os.path.dirname(obj["tokenizer"])) + "/" + os.path.basename(obj["tokenizer"])
    results.append(obj)
import tokenizers
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
doc = {
    "benchmark": "tokenizer encode throughput, single thread",
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
                "load_average_1_5_15": list(os.getloadavg()),
                "note": "shared build machine; quiver and the reference run one after the other, so load noise moves the ratio"},
    "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "settings": {"iters": int(sys.argv[3]), "statistic": "median", "text": "tests/fixtures/tokenizers/corpus.jsonl joined with newlines, x5",
                 "quiver_build": "Release (-O3)", "reference": f"tokenizers {tokenizers.__version__} (TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1)",
                 "flags": "no special tokens added or parsed"},
    "results": results,
}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}")
for r in results:
    ref = r.get("reference") or {}
    print(f"{r['label']:20s} {r['mode']:9s} quiver {r['quiver']['mb_per_s']:8.2f} MB/s  reference {ref.get('mb_per_s', 0):7.2f} MB/s  x{r.get('speedup', 0):6.2f}  same ids: {r.get('same_ids')}")
PY
