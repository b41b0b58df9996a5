#!/usr/bin/env python3
"""Measures how closely quiver follows transformers on the real GGUF models (fixtures from
scripts/make-gguf-fixtures): for the exact path (QUIVER_DEQUANTIZE=1) and the quantized path,
the worst max|a-b|/max|b| over the checked logits rows, the worst log-probability difference
over the checked vocabulary entries (when the fixture has the rows' logsumexp), and the greedy
64-token continuations that are identical (and tokens in agreement). Writes
bench/results/gguf-fidelity.json. Usage: bench/gguf_fidelity.py [--threads 2] [NAME...]"""
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


def run(cmd, env):
    e = dict(os.environ)
    e.update(env)
    r = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if r.returncode:
        raise RuntimeError(r.stderr[-1500:])
    return r.stdout


def measure(name, threads):
    fx = json.load(open(os.path.join(ROOT, "tests", "fixtures", "gguf", f"{name}.json")))
    path = subprocess.run([os.path.join(ROOT, "scripts", "fetch-models"), name], check=True, capture_output=True,
                          text=True).stdout.split()[-1]
    out = {}
    for mode, deq in (("exact", "1"), ("quantized", "0")):
        env = {"QUIVER_DEQUANTIZE": deq}
        worst_rel, worst_lp = 0.0, None
        for p in fx["logit_prompts"]:
            rows = [r["row"] for r in p["rows"]]
            got = json.loads(run([QUIVER, "logits", "--model", path, "--threads", str(threads), "--prompt-ids",
                                  " ".join(map(str, p["ids"])), "--rows", " ".join(map(str, rows))], env))["rows"]
            for ref, g in zip(p["rows"], got):
                a = g["logits"]
                worst_rel = max(worst_rel, max(abs(a[i] - v) for i, v in zip(ref["idx"], ref["val"])) / ref["max_abs"])
                if "logsumexp" in ref:
                    m = max(a)
                    lse = math.log(sum(math.exp(x - m) for x in a)) + m
                    d = max(abs((a[i] - lse) - (v - ref["logsumexp"])) for i, v in zip(ref["idx"], ref["val"]))
                    worst_lp = d if worst_lp is None else max(worst_lp, d)
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for g in fx["greedy"]:
                f.write(json.dumps({"prompt_ids": g["ids"], "max_tokens": 64, "temperature": 0, "ignore_eos": True}) + "\n")
        try:
            lines = run([QUIVER, "generate", "--model", path, "--threads", str(threads), "--prompts", f.name, "--ids"], env)
        finally:
            os.unlink(f.name)
        gens = [json.loads(x) for x in lines.splitlines() if x.strip().startswith("{")]
        ids = [g.get("ids") or g.get("token_ids") for g in gens]
        same = sum(a == r["generated"] for a, r in zip(ids, fx["greedy"]))
        toks = sum(x == y for a, r in zip(ids, fx["greedy"]) for x, y in zip(a, r["generated"]))
        out[mode] = {"logits_max_rel_err": worst_rel, "max_logprob_diff": worst_lp,
                     "greedy_identical": f"{same}/{len(fx['greedy'])}", "greedy_tokens_agreeing": f"{toks}/{64 * len(ids)}"}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("names", nargs="*", default=["smollm2", "qwen2.5-coder"])
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {"benchmark": "gguf-fidelity", "reference": "transformers from_pretrained(dir, gguf_file=...) in float32",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
           "settings": {"threads": a.threads, "logits": "rows of prompts of 8, 37, 120, 300 tokens; top-64 + 192 random "
                        "vocabulary entries per row", "greedy": "10 chat prompts x 64 tokens, EOS ignored"},
           "models": {n: measure(n, a.threads) for n in a.names}}
    p = os.path.join(ROOT, "bench", "results", "gguf-fidelity.json")
    with open(p, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.exit(main())
