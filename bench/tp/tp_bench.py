#!/usr/bin/env python3
"""CPU engine throughput at tensor parallel sizes 1 and 2 (and more with --tp), in one run, and
the share of rank 0's step time spent in the all-reduces and the logits gather.

Each size runs `quiver bench engine --tp N` (continuous batching, greedy, EOS ignored) on the same
random prompts; the results JSON holds every size's bench output, the ratios against TP 1, the
machine, the commit and the load average before and after. On a machine with few cores TP is
slower, not faster: the ranks share the cores and every layer adds two synchronisations; the
point of TP on CPUs is the memory split and testing the sharded code.

With --device cuda the ranks are GPUs (rank i on CUDA device i, NCCL); there the collectives are
only enqueued on each rank's stream, so the "comm share" counts the time to enqueue them and to
wait for the gathered logits, not the device time of the all-reduces (never run on a GPU yet).

  bench/tp/tp_bench.py --model PATH [--bin build/release/quiver] [--tp 1 2] [--threads 2]
      [--device cpu|cuda] [--num-prompts 16 --input-len 64 --output-len 32 --runs 3] [--out FILE]
Run it under `nice -n -15` on a shared machine."""
import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "release", "quiver"))
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load_before = os.getloadavg()
    sizes = {}
    for tp in a.tp:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        cmd = [a.bin, "bench", "engine", a.model, "--tp", str(tp), "--threads", str(a.threads), "--device", a.device,
               "--num-prompts",
               str(a.num_prompts), "--input-len", str(a.input_len), "--output-len", str(a.output_len), "--runs",
               str(a.runs), "--seed", "7", "--result-file", path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"tp {tp} failed: {r.stderr[-2000:]}")
        with open(path) as f:
            res = json.load(f)
        os.unlink(path)
        res.pop("output_ids", None)
        sizes[str(tp)] = res
        print(f"tp {tp}: {res['output_tokens_per_s']:.1f} output tok/s, {res['total_tokens_per_s']:.1f} total tok/s"
              + (f", comm {100 * res['tensor_parallel']['comm_share_of_step']:.1f}% of step"
                 if "tensor_parallel" in res else ""))
    base = sizes[str(a.tp[0])]["total_tokens_per_s"]
    out = {
        "tool": "bench/tp/tp_bench.py",
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "node": platform.node()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "settings": {"model": a.model, "device": a.device, "threads": a.threads, "num_prompts": a.num_prompts,
                     "input_len": a.input_len, "output_len": a.output_len, "runs": a.runs},
        "throughput_ratio_vs_tp1": {k: v["total_tokens_per_s"] / base for k, v in sizes.items()},
        "sizes": sizes,
    }
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main()
