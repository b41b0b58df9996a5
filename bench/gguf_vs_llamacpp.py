#!/usr/bin/env python3
"""quiver vs llama.cpp on the same GGUF files and the same thread count (CPU): batch-1 decode
tok/s, 512-token prefill tok/s, 32 concurrent sequences' generation throughput, and the peak
RSS of each run. llama.cpp is built from its public source by bench/llamacpp/build.sh (never
committed). Writes bench/results/gguf-vs-llamacpp-<model>.json with the machine, commit and
settings. Speed is measured here, never asserted in tests.

--quiver-before BIN also measures another quiver binary in the same run (e.g. the parent commit's),
so a before/after ratio comes from one run. Run it under `nice -n -15` on a shared machine; the
load average is recorded.

Usage: bench/gguf_vs_llamacpp.py [--threads 2] [--runs 1] [--models smollm2,qwen2.5-coder] [--skip-llamacpp]
       [--quiver BIN] [--quiver-before BIN] [--out-suffix S]
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIVER = os.path.join(ROOT, "build", "release", "quiver")
RUNS = 1   # repetitions (median); 2-core CI-class machines are slow
GEN = 64   # generated tokens per sequence in the decode and throughput runs


def sh(cmd, env=None, timeout=3600):
    """Runs cmd under /usr/bin/time -v; returns (stdout, stderr, peak RSS in MiB)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=e, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-1500:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return r.stdout, r.stderr, (int(m.group(1)) / 1024.0 if m else None)


def model_path(name):
    return subprocess.run([os.path.join(ROOT, "scripts", "fetch-models"), name], check=True, capture_output=True,
                          text=True).stdout.split()[-1]


def quiver_bench(quiver, model, threads, n, inp, out, env=None):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        res = f.name
    try:
        _, _, rss = sh([quiver, "bench", "engine", "--model", model, "--threads", str(threads), "--num-prompts", str(n),
                        "--input-len", str(inp), "--output-len", str(out), "--runs", str(RUNS), "--max-num-seqs", str(n),
                        "--result-file", res], env)
        with open(res) as fh:
            j = json.load(fh)
    finally:
        os.unlink(res)
    return j, rss


def pick(j, *keys):
    """First numeric field of the result JSON whose name contains all keys (the result schema
    belongs to quiver bench; this keeps the script tolerant of field renames)."""
    def walk(o, path=""):
        if isinstance(o, dict):
            for k, v in o.items():
                yield from walk(v, path + "." + k)
        elif isinstance(o, (int, float)):
            yield path, o
    for p, v in walk(j):
        if all(k in p for k in keys):
            return v
    return None


def run_quiver(quiver, model, threads):
    out = {}
    j, rss = quiver_bench(quiver, model, threads, 1, 16, GEN)
    out["decode_b1_tok_s"] = pick(j, "output_tok")
    out["decode_b1_peak_rss_mib"] = rss
    j, rss = quiver_bench(quiver, model, threads, 1, 512, 1)
    ttft = pick(j, "ttft")
    out["prefill_512_tok_s"] = 512 / (ttft / 1000.0) if ttft else None
    out["prefill_512_peak_rss_mib"] = rss
    j, rss = quiver_bench(quiver, model, threads, 32, GEN, GEN)
    out["throughput_32seq_output_tok_s"] = pick(j, "output_tok")
    out["throughput_32seq_peak_rss_mib"] = rss
    out["load_avg"] = os.getloadavg()
    return out


def run_llamacpp(bindir, model, threads):
    out = {}
    so, _, rss = sh([os.path.join(bindir, "llama-bench"), "-m", model, "-t", str(threads), "-p", "512", "-n", str(GEN),
                     "-r", str(RUNS), "-o", "json"])
    for row in json.loads(so):
        if row.get("n_prompt") == 512 and row.get("n_gen") == 0:
            out["prefill_512_tok_s"] = row.get("avg_ts")
        if row.get("n_gen") == GEN and row.get("n_prompt") == 0:
            out["decode_b1_tok_s"] = row.get("avg_ts")
    out["llama_bench_peak_rss_mib"] = rss
    so, se, rss = sh([os.path.join(bindir, "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", "9000",
                      "-npp", str(GEN), "-ntg", str(GEN), "-npl", "32"])
    # table row: |  PP |  TG |  B |  N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in (so + se).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0] == str(GEN) and cells[1] == str(GEN) and cells[2] == "32":
            out["throughput_32seq_output_tok_s"] = float(cells[7])
    out["batched_bench_peak_rss_mib"] = rss
    out["load_avg"] = os.getloadavg()
    return out


def main():
    global RUNS
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,qwen2.5-coder")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--quiver", default=QUIVER)
    ap.add_argument("--quiver-before", default=None)
    ap.add_argument("--out-suffix", default="")
    a = ap.parse_args()
    RUNS = a.runs
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    bindir = None
    if not a.skip_llamacpp:
        bindir = subprocess.run([os.path.join(ROOT, "bench", "llamacpp", "build.sh")], check=True, capture_output=True,
                                text=True).stdout.split("\n")[0] + "/bin"
    for name in a.models.split(","):
        model = model_path(name)
        res = {"benchmark": "gguf-vs-llamacpp", "model": name, "file": os.path.basename(model),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_avg_at_start": os.getloadavg()},
               "settings": {"threads": a.threads, "runs": RUNS, "decode": f"1 sequence, 16 prompt + {GEN} generated tokens",
                            "prefill": "1 sequence of 512 tokens", "throughput": f"32 sequences x ({GEN} + {GEN})",
                            "quiver": "CPU backend, weights kept quantized, release build",
                            "llama.cpp": f"llama-bench -p 512 -n {GEN} -r {RUNS}; llama-batched-bench -npp {GEN} -ntg {GEN} -npl 32"},
               "quiver": run_quiver(a.quiver, model, a.threads)}
        if a.quiver_before:
            res["quiver_before"] = run_quiver(a.quiver_before, model, a.threads)
        if bindir:
            try:
                res["llama.cpp"] = run_llamacpp(bindir, model, a.threads)
            except Exception as e:  # noqa: BLE001 - the peer's failure is reported, not fatal
                res["llama.cpp"] = {"error": str(e)[:500]}
        path = os.path.join(ROOT, "bench", "results", f"gguf-vs-llamacpp-{name}{a.out_suffix}.json")
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.exit(main())
