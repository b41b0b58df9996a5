"""Streaming load through `quiver serve`: C concurrent clients each stream one completion of a
fixed length (ignore_eos), for several C, a few repetitions each. Reports per level the median
time to first token, median inter-token gap, and aggregate generated tokens per second, plus the
throughput ratio of each level against one client measured in the same run.

Usage: python bench/serve/load.py QUIVER_BIN MODEL_DIR [--out FILE] [--tokens N]
       [--levels 1,16,200] [--reps 3]
Needs only the Python standard library. Results: JSON (machine, commit, settings, numbers)."""
import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(bin_, model_dir):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    p = subprocess.Popen([bin_, "serve", "--port", "0", "--model", f"m={model_dir}"],
                         stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(1200):
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log.name).read())
        if m:
            return p, int(m.group(1)), log.name
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    sys.exit("server did not start:\n" + open(log.name).read())


def one(port, n_tokens, out, idx, barrier):
    body = json.dumps({"model": "m", "prompt": "Once upon a time", "max_tokens": n_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    barrier.wait()
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    stamps = []
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(65536)
        if not chunk:
            break
        now = time.perf_counter()
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev.startswith(b"data: {") and b'"text":""' not in ev:
                stamps.append(now)
    c.close()
    out[idx] = (t0, stamps)


def level(port, conc, n_tokens):
    out = [None] * conc
    barrier = threading.Barrier(conc)
    ths = [threading.Thread(target=one, args=(port, n_tokens, out, i, barrier)) for i in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    start = min(t0 for t0, _ in out)
    end = max(s[-1] for _, s in out if s)
    ttft = [s[0] - t0 for t0, s in out if s]
    # Per request: mean gap between its first and last chunk (reads batch several chunks, so
    # single gaps are not meaningful); the median over requests.
    gaps = [(s[-1] - s[0]) / (len(s) - 1) for _, s in out if len(s) > 1]
    tokens = sum(len(s) for _, s in out)
    return {"ttft_s": statistics.median(ttft), "itl_s": statistics.median(gaps) if gaps else None,
            "tokens_per_s": tokens / (end - start), "chunks": tokens}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("model")
    ap.add_argument("--out")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,16,200")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. the build)")
    a = ap.parse_args()
    p, port, logname = start(a.bin, a.model)
    try:
        level(port, 4, 8)  # warm up
        results = {}
        for conc in [int(x) for x in a.levels.split(",")]:
            runs = [level(port, conc, a.tokens) for _ in range(a.reps)]
            results[conc] = {k: statistics.median(r[k] for r in runs) for k in ("ttft_s", "itl_s", "tokens_per_s")}
            results[conc]["runs"] = runs
        base = results[min(results)]["tokens_per_s"]
        for conc in results:
            results[conc]["throughput_vs_1_client"] = results[conc]["tokens_per_s"] / base
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        os.unlink(logname)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    doc = {"benchmark": "serve-load", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                   "processor": platform.processor()},
           "commit": commit, "settings": {"binary": a.bin, "model": a.model, "tokens": a.tokens,
                                          "levels": a.levels, "reps": a.reps, "prompt": "Once upon a time",
                                          "note": a.note},
           "results": {str(k): v for k, v in results.items()}}
    text = json.dumps(doc, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    for k, v in results.items():
        print(f"{k:>4} clients: ttft {v['ttft_s']*1e3:8.1f} ms  itl {v['itl_s']*1e3:7.2f} ms  "
              f"{v['tokens_per_s']:9.1f} tok/s  x{v['throughput_vs_1_client']:.1f} vs 1 client")


if __name__ == "__main__":
    main()
