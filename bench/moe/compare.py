#!/usr/bin/env python3
"""Runs two qv-bench-moe binaries (a peer, e.g. the previous commit's, and this one) alternately
in one run, so their ratio comes from the same machine state, and writes one results JSON with
the machine, both commits, the load average before and after, and the tokens/s ratio per token
count and weight format. Run it under `nice -n -15` on a shared machine.

  bench/moe/compare.py --base OLD_BIN --base-commit SHA --new NEW_BIN [--out FILE]
                       [--formats f32,mxfp4] [--reps 3] [-- extra qv-bench-moe args]
"""
import argparse
import json
import os
import platform
import subprocess
import sys


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--base-commit", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--out")
    ap.add_argument("--formats", default="f32,mxfp4")
    ap.add_argument("--reps", default="3")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"tool": "bench/moe/compare.py", "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(),
                                                       "kernel": platform.release()},
           "commit": commit, "base_commit": a.base_commit, "nice": os.nice(0),
           "loadavg_before": os.getloadavg(), "runs": []}
    for fmt in a.formats.split(","):
        pair = {}
        for name, binary in (("base", a.base), ("new", a.new)):
            r = subprocess.run([binary, "--format", fmt, "--reps", a.reps, "--label", name] + a.extra,
                               capture_output=True, text=True, check=True)
            pair[name] = json.loads(r.stdout)
            print(f"{fmt} {name}: " + ", ".join(f"{x['tokens']} tok {x['tokens_per_s']:.1f}/s"
                                                 for x in pair[name]["results"]), file=sys.stderr)
        ratio = [{"tokens": b["tokens"], "new_over_base_tokens_per_s": n["tokens_per_s"] / b["tokens_per_s"]}
                 for b, n in zip(pair["base"]["results"], pair["new"]["results"])]
        out["runs"].append({"format": fmt, "base": pair["base"], "new": pair["new"], "ratio": ratio})
    out["loadavg_after"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
