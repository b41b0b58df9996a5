#!/usr/bin/env python3
"""The fleet's costs on this machine (issue 18), with the release binary:

1. Wake time per real model: sleep level 1 (engine and KV dropped, weights kept) and level 2
   (weights dropped too) through the admin API, then wake, against a full process restart of
   the same model (spawn -> listening -> first completion). Reported: the fleet's own load
   duration, the wall time from the wake call to the first completion, and the restart's.
2. Throughput of a busy model when two models share one KV pool (one memory budget, each with
   a small reserved minimum) against two static halves of the same blocks, while the other
   model is idle: tokens/s of 32 concurrent long generations on stories260K (median of --reps
   alternated runs).

Run under `nice -n -15` (the machine is shared); the load average is recorded. Writes
bench/results/fleet-swap-<date>.json. Usage: bench/fleet_swap.py [--models smollm2 qwen2.5-coder]"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIVER = os.environ.get("QV_BIN_RELEASE") or os.path.join(ROOT, "build", "release", "quiver")
SHARED = os.environ.get("QV_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
ADMIN = {"Authorization": "Bearer bench-admin"}
COMMON = ["--max-model-len", "256", "--max-num-seqs", "32", "--max-num-batched-tokens", "512", "--threads", "2"]


class Server:
    def __init__(self, args):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.t0 = time.time()
        self.proc = subprocess.Popen([QUIVER, "serve", "--port", "0", *args], stdout=subprocess.DEVNULL, stderr=self.log)
        while True:
            txt = open(self.log.name).read()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", txt)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError(txt[-2000:])
            time.sleep(0.01)
        self.listen_s = time.time() - self.t0

    def call(self, method, path, obj=None, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=json.dumps(obj).encode() if obj is not None else None,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def complete(self, model, prompt="Once upon a time", n=4):
        return self.call("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0})

    def info(self, name):
        return self.call("GET", f"/admin/v1/models/{name}", headers=ADMIN)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        os.unlink(self.log.name)


def cfg_file(models, **extra):
    f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"admin_keys": ["bench-admin"], "models": models, **extra}, f)
    f.close()
    return f.name


def model_path(name):
    return subprocess.run([os.path.join(ROOT, "scripts", "fetch-models"), "--path", name], check=True,
                          capture_output=True, text=True).stdout.strip()


def wake_times(name, reps):
    path = model_path(name)
    cfg = cfg_file([{"name": "m", "path": path}])
    out = {"model": name, "path": os.path.basename(path), "file_bytes": os.path.getsize(path)}
    restarts = []
    for _ in range(reps):
        t0 = time.time()
        srv = Server(["--config", cfg, *COMMON])
        srv.complete("m")
        restarts.append(time.time() - t0)
        srv.stop()
    out["restart_to_first_completion_s"] = sorted(restarts)[len(restarts) // 2]
    srv = Server(["--config", cfg, *COMMON])
    ref = srv.complete("m")["choices"][0]["text"]
    for level in (1, 2):
        walls, fleet_s, same = [], [], True
        for _ in range(reps):
            srv.call("POST", "/admin/v1/models/m/sleep", {"level": level}, ADMIN)
            while not (srv.info("m")["state"] == "sleeping" and srv.info("m")["kv_blocks"] == 0):
                time.sleep(0.01)
            t0 = time.time()
            txt = srv.complete("m")["choices"][0]["text"]  # the request wakes it
            walls.append(time.time() - t0)
            fleet_s.append(srv.info("m")["last_load_seconds"])
            same &= txt == ref
        out[f"wake_level{level}_to_first_completion_s"] = sorted(walls)[len(walls) // 2]
        out[f"wake_level{level}_fleet_load_s"] = sorted(fleet_s)[len(fleet_s) // 2]
        out[f"wake_level{level}_greedy_identical"] = same
    srv.stop()
    return out


def busy_throughput(shared_pool, blocks):
    """Two stories260K models, `blocks` KV blocks in all; model a gets 32 long generations."""
    stories = os.path.join(SHARED, "models", "stories260K")
    if shared_pool:
        # weights and scratch of both (measured by a first run), plus the blocks
        probe = Server(["--config", cfg_file([{"name": "a", "path": stories}, {"name": "b", "path": stories}]), *COMMON])
        fp = sum(probe.info(n)["weight_bytes"] for n in ("a", "b"))
        probe.stop()
        models = [{"name": n, "path": stories, "min_kv": 16} for n in ("a", "b")]
        args = ["--config", cfg_file(models), "--memory-budget", str(fp + blocks * 20480)]
    else:
        models = [{"name": n, "path": stories, "n_kv_blocks": blocks // 2} for n in ("a", "b")]
        args = ["--config", cfg_file(models)]
    srv = Server(args + COMMON)
    toks, errs = [0], []

    def one(i):
        try:
            r = srv.complete("a", f"Once upon a time {i}", 240)
            toks[0] += r["usage"]["completion_tokens"]
        except Exception as e:  # noqa: BLE001
            errs.append(str(e))

    srv.complete("b")  # the idle model has been used once (its minimum is warm)
    t0 = time.time()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.time() - t0
    peak = srv.info("a")["kv_blocks"]
    srv.stop()
    return {"pool": "shared" if shared_pool else "static halves", "kv_blocks_total": blocks,
            "busy_model_kv_blocks_at_end": peak, "completion_tokens": toks[0], "seconds": round(dt, 3),
            "tokens_per_s": round(toks[0] / dt, 1), "errors": errs[:3]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["smollm2", "qwen2.5-coder"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=128)
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {"bench": "fleet-swap", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg_at_start": os.getloadavg()},
           "settings": {"serve_flags": COMMON, "reps": a.reps, "nice": os.nice(0)},
           "wake": [], "busy_pool": []}
    for m in a.models:
        res["wake"].append(wake_times(m, a.reps))
        print(json.dumps(res["wake"][-1]), file=sys.stderr)
    runs = {False: [], True: []}
    for _ in range(a.reps):  # alternated, so both see the same machine load
        for shared in (False, True):
            runs[shared].append(busy_throughput(shared, a.blocks))
            print(json.dumps(runs[shared][-1]), file=sys.stderr)
    for shared in (False, True):
        rs = sorted(runs[shared], key=lambda r: r["tokens_per_s"])
        med = dict(rs[len(rs) // 2])
        med["tokens_per_s_all_runs"] = [r["tokens_per_s"] for r in runs[shared]]
        res["busy_pool"].append(med)
    res["busy_pool_speedup_shared_over_static"] = round(
        res["busy_pool"][1]["tokens_per_s"] / res["busy_pool"][0]["tokens_per_s"], 3)
    res["machine"]["load_avg_at_end"] = os.getloadavg()
    out = os.path.join(ROOT, "bench", "results", f"fleet-swap-{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(out)


if __name__ == "__main__":
    main()
