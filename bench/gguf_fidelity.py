#!/usr/bin/env python3
"""How closely quiver and llama.cpp follow transformers on the real GGUF models.

The reference is the committed fixture (tests/fixtures/gguf/NAME.json, from
scripts/make-gguf-fixtures: transformers from_pretrained(dir, gguf_file=...) in float32): rows of
logits of prompts of 8, 37, 120 and 300 tokens (top-64 + 192 random vocabulary entries per row)
and greedy 64-token continuations of 10 chat prompts. Measured, for quiver's exact path
(QUIVER_DEQUANTIZE=1), quiver's quantized path (the fast one, weights kept quantized), and
llama.cpp's CPU path on the same file:
  logits_max_rel_err    worst max|a-b| / max|b| over the checked rows
  max_logprob_diff      worst |log p_a - log p_b| over the checked entries; each side's
                        log-softmax uses its own full-vocabulary logsumexp (the reference's from
                        the fixture, or recomputed with --ref-python when the fixture lacks it)
  greedy_identical      continuations identical to the reference's (and tokens in agreement)
llama.cpp is built by bench/llamacpp/build.sh; its logits are read through the Python bindings
of the same llama-cpp-python sdist (ctypes over the built libllama, nothing compiled again), in a
throwaway venv under build/ (numpy, diskcache, typing_extensions, jinja2 from PyPI).
Writes bench/results/gguf-fidelity.json.

Usage: bench/gguf_fidelity.py [--threads 2] [--ref-python $QV_PYTHON] [--no-llamacpp] [NAME...]"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIVER = os.path.join(ROOT, "build", "release", "quiver")
LCPP_VENV = os.path.join(ROOT, "build", "lcpp-venv")

# Runs under the reference Python (torch, transformers, gguf): the full-vocabulary logsumexp of
# the fixture's rows. stdin: {"path", "prompts": [{"ids", "rows"}]}; stdout: [[lse per row]].
REF_LSE = r"""
import json, os, sys, torch
from transformers import AutoModelForCausalLM
a = json.load(sys.stdin)
torch.set_num_threads(a["threads"])
m = AutoModelForCausalLM.from_pretrained(os.path.dirname(a["path"]), gguf_file=os.path.basename(a["path"]),
                                         torch_dtype=torch.float32, attn_implementation="eager").eval()
out = []
with torch.no_grad():
    for p in a["prompts"]:
        lg = m(torch.tensor([p["ids"]])).logits[0].double()
        out.append([float(torch.logsumexp(lg[r], 0)) for r in p["rows"]])
print(json.dumps(out))
"""

# Runs under the llama.cpp bindings: the logits of the rows (at the fixture's entries, plus the
# row's logsumexp and max|.|) and greedy continuations. stdin: {"path", "threads", "prompts",
# "greedy": [ids], "n_gen"}.
LCPP = r"""
import json, sys
import numpy as np
import llama_cpp
a = json.load(sys.stdin)
m = llama_cpp.Llama(a["path"], n_ctx=1024, n_batch=512, n_threads=a["threads"], n_threads_batch=a["threads"],
                    logits_all=True, verbose=False)
rows = []
for p in a["prompts"]:
    m.reset()
    m.eval(p["ids"])
    sc = np.array(m.scores[:len(p["ids"])], dtype=np.float64)
    out = []
    for r, idx in zip(p["rows"], p["idx"]):
        x = sc[r]
        mx = x.max()
        out.append({"val": [float(x[i]) for i in idx], "lse": float(np.log(np.exp(x - mx).sum()) + mx),
                    "max_abs": float(np.abs(x).max())})
    rows.append(out)
gens = []
for ids in a["greedy"]:
    m.reset()
    m.eval(ids)
    g = []
    for _ in range(a["n_gen"]):
        t = int(np.argmax(m.scores[m.n_tokens - 1]))
        g.append(t)
        m.eval([t])
    gens.append(g)
print(json.dumps({"rows": rows, "greedy": gens}))
"""


def run(cmd, env=None, stdin=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, input=stdin)
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr[-1500:]}")
    return r.stdout


def logprob_diff(vals, lse, ref_vals, ref_lse):
    return max(abs((a - lse) - (b - ref_lse)) for a, b in zip(vals, ref_vals))


def lse_of(row):
    m = max(row)
    return math.log(sum(math.exp(x - m) for x in row)) + m


def greedy_stats(gens, fx):
    same = sum(g == r["generated"] for g, r in zip(gens, fx["greedy"]))
    toks = sum(x == y for g, r in zip(gens, fx["greedy"]) for x, y in zip(g, r["generated"]))
    return {"greedy_identical": f"{same}/{len(fx['greedy'])}", "greedy_tokens_agreeing": f"{toks}/{64 * len(gens)}"}


def measure_quiver(path, fx, ref_lse, threads, quiver):
    out = {}
    for mode, deq in (("quiver_exact", "1"), ("quiver_quantized", "0")):
        env = {"QUIVER_DEQUANTIZE": deq, "QUIVER_LOG": "warn"}
        worst_rel, worst_lp = 0.0, 0.0
        for p, lses in zip(fx["logit_prompts"], ref_lse):
            rows = [r["row"] for r in p["rows"]]
            got = json.loads(run([quiver, "logits", "--model", path, "--threads", str(threads), "--prompt-ids",
                                  " ".join(map(str, p["ids"])), "--rows", " ".join(map(str, rows))], env))["rows"]
            for ref, g, rl in zip(p["rows"], got, lses):
                a = g["logits"]
                vals = [a[i] for i in ref["idx"]]
                worst_rel = max(worst_rel, max(abs(x - v) for x, v in zip(vals, ref["val"])) / ref["max_abs"])
                worst_lp = max(worst_lp, logprob_diff(vals, lse_of(a), ref["val"], rl))
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for g in fx["greedy"]:
                f.write(json.dumps({"prompt_ids": g["ids"], "max_tokens": 64, "temperature": 0, "ignore_eos": True}) + "\n")
        try:
            lines = run([quiver, "generate", "--model", path, "--threads", str(threads), "--prompts", f.name, "--ids"], env)
        finally:
            os.unlink(f.name)
        gens = [json.loads(x) for x in lines.splitlines() if x.strip().startswith("{")]
        ids = [g.get("ids") or g.get("token_ids") for g in gens]
        out[mode] = {"logits_max_rel_err": worst_rel, "max_logprob_diff": worst_lp, **greedy_stats(ids, fx)}
    return out


def lcpp_python(sdist):
    py = os.path.join(LCPP_VENV, "bin", "python")
    if not os.path.exists(py):
        run([sys.executable, "-m", "venv", LCPP_VENV])
        run([py, "-m", "pip", "install", "-q", "numpy", "diskcache", "typing_extensions", "jinja2"])
    return py


def measure_llamacpp(path, fx, ref_lse, threads, build):
    lib, _, sdist = build
    req = {"path": path, "threads": threads, "n_gen": 64,
           "prompts": [{"ids": p["ids"], "rows": [r["row"] for r in p["rows"]], "idx": [r["idx"] for r in p["rows"]]}
                       for p in fx["logit_prompts"]],
           "greedy": [g["ids"] for g in fx["greedy"]]}
    res = json.loads(run([lcpp_python(sdist), "-c", LCPP], {"PYTHONPATH": sdist, "LLAMA_CPP_LIB_PATH": lib + "/bin"},
                         json.dumps(req)))
    worst_rel, worst_lp = 0.0, 0.0
    for p, got, lses in zip(fx["logit_prompts"], res["rows"], ref_lse):
        for ref, g, rl in zip(p["rows"], got, lses):
            worst_rel = max(worst_rel, max(abs(x - v) for x, v in zip(g["val"], ref["val"])) / ref["max_abs"])
            worst_lp = max(worst_lp, logprob_diff(g["val"], g["lse"], ref["val"], rl))
    return {"logits_max_rel_err": worst_rel, "max_logprob_diff": worst_lp, **greedy_stats(res["greedy"], fx)}


def reference_lse(path, fx, ref_python, threads):
    if all("logsumexp" in r for p in fx["logit_prompts"] for r in p["rows"]):
        return [[r["logsumexp"] for r in p["rows"]] for p in fx["logit_prompts"]]
    if not ref_python:
        raise SystemExit("the fixture has no logsumexp: pass --ref-python (a Python with torch, transformers, gguf)")
    req = {"path": path, "threads": threads,
           "prompts": [{"ids": p["ids"], "rows": [r["row"] for r in p["rows"]]} for p in fx["logit_prompts"]]}
    return json.loads(run([ref_python, "-c", REF_LSE], None, json.dumps(req)).strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiver", default=QUIVER)
    ap.add_argument("--ref-python", default=os.environ.get("QV_PYTHON"))
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gguf-fidelity.json"))
    ap.add_argument("names", nargs="*", default=["smollm2", "qwen2.5-coder"])
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    build = None
    if not a.no_llamacpp:
        build = run([os.path.join(ROOT, "bench", "llamacpp", "build.sh")]).split("\n")[:3]
    res = {"benchmark": "gguf-fidelity", "reference": "transformers from_pretrained(dir, gguf_file=...) in float32, eager "
           "attention (tests/fixtures/gguf)", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
           "load_avg_at_start": os.getloadavg(),
           "settings": {"threads": a.threads, "logits": "rows {0, n/2, n-1} of prompts of 8, 37, 120, 300 tokens; top-64 + "
                        "192 random vocabulary entries per row", "greedy": "10 chat prompts x 64 tokens, EOS ignored",
                        "llama.cpp": "llama-cpp-python 0.3.36's vendored llama.cpp, CPU, GGML_NATIVE, its default "
                        "(quantized-activation) dot products"},
           "models": {}}
    for name in a.names:
        fx = json.load(open(os.path.join(ROOT, "tests", "fixtures", "gguf", f"{name}.json")))
        path = run([os.path.join(ROOT, "scripts", "fetch-models"), name]).split()[-1]
        lse = reference_lse(path, fx, a.ref_python, a.threads)
        m = measure_quiver(path, fx, lse, a.threads, a.quiver)
        if build:
            m["llama.cpp"] = measure_llamacpp(path, fx, lse, a.threads, build)
        res["models"][name] = m
        print(name, json.dumps(m), flush=True)
    res["load_avg_at_end"] = os.getloadavg()
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(a.out)


if __name__ == "__main__":
    sys.exit(main())
