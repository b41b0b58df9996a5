"""quiver's CPU backend side by side with llama.cpp on the same models, same threads, one run.

llama.cpp is built from its public source by bench/llamacpp/build.sh (the sdist of
llama-cpp-python on PyPI vendors it; nothing of it is committed; LLAMACPP_PREBUILT reuses a
build). Models are converted to GGUF with llama.cpp's own convert_hf_to_gguf.py into build/bench
(an existing build/bench/NAME-TYPE.gguf is reused).

Each weight dtype's runs (quiver's entries and llama.cpp's) go back to back after their own read
bandwidth measurement, the order flipped each of --rounds rounds; "summary" holds the medians over
rounds and quiver's ratios to llama.cpp at the same dtype.

Measured per model and weight dtype, medians of --reps:
  decode     batch-1 decode tok/s (quiver: `quiver bench engine --path model`, 1 x (16 in + --gen
             out); llama.cpp: llama-bench tg<gen>), against the roofline read_gbps / weight bytes
  long ctx   with --long-ctx N: batch-1 decode of --gen tokens after an N-token prompt (quiver:
             1 x (N in + gen + 1 out), the first token being the prefill's; llama.cpp: llama-bench
             -d N -n gen), attention over the paged cache included
  prefill    512-token prompt tok/s (llama-bench pp512)
  batch32    32 sequences x (--batch-len in + --batch-len out), total tokens/s
             (llama-batched-bench, npl 32)
  rss        peak resident set of the batch32 run (/usr/bin/time %M)
  load       cold start from the page cache to the first token (quiver: qv-bench-cpu --load;
             llama.cpp: wall time of llama-bench -p 0 -n 1 -r 1 --no-warmup)
plus the machine's read bandwidth (qv-bench-cpu, STREAM-style sum over 1 GiB, all threads), taken
again before each dtype's pair (its roofline is read_gbps / weight bytes), and with it the f32 FMA
peak of all threads (fma_peak_gflops): prefill is also quoted as GFLOP/s (matmuls and attention of
a 512-token prompt per token, from config.json) and as a share of the run's highest peak reading
(a lower reading is the VM lending less CPU at that moment), the compute limit of
the exact matmul (llama.cpp's BF16 and quiver's bf16-dot multiply bf16 pairs, twice the products
per instruction, so their share can pass 100%).

Usage (from the repository root, release build done):
  $QV_PYTHON bench/cpu/vs_llama_cpp.py --model stories260K=../shared/models/stories260K:f32 \
      --model rand05b=build/bench/rand05b-bf16:bf16 ... [--threads 2] [--reps 3] [--out FILE]
Each --model is NAME=DIR:QUIVER_DTYPE[,DIR2:DTYPE2]; GGUF f32/f16/bf16 files are made from the
first DIR. Make a random 0.5B checkpoint with bench/cpu/make-random-model.py.

quiver's opt-in modes: a DTYPE ending in "+dot" (e.g. DIR:bf16+dot) runs that entry with
--cpu-bf16-dot (BF16 weights x bf16-rounded activations on AVX512_BF16, README), so the exact and
the bf16-dot path are measured in the same run; --quiver-flag FLAG (repeatable) adds FLAG to every
`quiver bench engine` run and --quiver-env KEY=VALUE (repeatable) sets KEY in every quiver process
(bench engine and the cold-load test). Both are recorded in the results."""
import argparse
import datetime
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.path.join(ROOT, "build", "bench")
LLAMA_PYPI = "llama-cpp-python==0.3.36"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def llama_build():
    """(source dir, bin dir) of the llama.cpp peer, built (or reused) by bench/llamacpp/build.sh."""
    lines = sh([os.path.join(ROOT, "bench", "llamacpp", "build.sh")]).stdout.split("\n")
    return lines[1], os.path.join(lines[0], "bin")


def gguf(src, model_dir, name, outtype):
    out = os.path.join(WORK, f"{name}-{outtype}.gguf")
    if not os.path.exists(out):
        sh([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), model_dir, "--outtype", outtype, "--outfile", out])
    return out


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (stdout, wall seconds, peak RSS KiB)."""
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "QVRSS %M"] + cmd, text=True, capture_output=True, env=env)
    wall = time.monotonic() - t0
    if r.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr[-2000:]}")
    rss = int(re.findall(r"QVRSS (\d+)", r.stderr)[-1])
    return r.stdout, wall, rss


def prefill_flops_per_token(model_dir, plen):
    """FLOPs per prompt token of a plen-token prefill: 2 per weight of each layer's matmuls, the
    causal attention's two products (4 * heads * head_dim * mean context), the logits of the last
    token spread over the prompt. Llama-shaped config.json; None when a field is missing."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        h, f_, L, nh = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"]
        nkv, v = c.get("num_key_value_heads", nh), c["vocab_size"]
        hd = c.get("head_dim") or h // nh
    except (OSError, KeyError, ValueError, TypeError):
        return None
    per_layer = h * nh * hd * 2 + h * nkv * hd * 2 + 3 * h * f_
    attn = 4 * nh * hd * (plen + 1) / 2
    return L * (2 * per_layer + attn) + 2 * h * v / plen


def quiver_env(args, dot):
    env = dict(os.environ, QUIVER_LOG="warn")
    for kv in args.quiver_env:
        k, v = kv.split("=", 1)
        env[k] = v
    if dot:
        env["QUIVER_CPU_BF16_DOT"] = "1"
    return env


def quiver_engine(args, model, n, inp, out, dot):
    env = quiver_env(args, dot)
    res = os.path.join(WORK, "qv-engine.json")
    flags = list(args.quiver_flag) + (["--cpu-bf16-dot"] if dot else [])
    _, _, rss = timed([args.quiver, "bench", "engine", "--model", model, "--path", "model", "--num-prompts", str(n),
                       "--input-len", str(inp), "--output-len", str(out), "--threads", str(args.threads),
                       "--runs", str(args.reps), "--max-batch-tokens", "2048", "--result-file", res] + flags, env)
    with open(res) as f:
        return json.load(f), rss


def bench_quiver(args, model, dot):
    r = {}
    j, _ = quiver_engine(args, model, 1, 16, args.gen, dot)
    r["decode_tok_s"] = j["decode_tokens_per_s"]
    with open(os.path.join(model, "config.json")) as f:
        max_pos = json.load(f).get("max_position_embeddings", 4096)
    plen = min(512, max_pos - 1)  # stories260K has 512 positions: 511 + 1
    j, _ = quiver_engine(args, model, 1, plen, 1, dot)
    r["prefill512_tok_s"] = j["prefill_tokens_per_s"]
    r["prefill_len"] = plen
    j, rss = quiver_engine(args, model, 32, args.batch_len, args.batch_len, dot)
    r["batch32_total_tok_s"] = j["total_tokens_per_s"]
    r["batch32_peak_rss_kb"] = rss
    if args.long_ctx:
        j, _ = quiver_engine(args, model, 1, args.long_ctx, args.gen + 1, dot)
        r["decode_long_ctx_tok_s"] = j["decode_tokens_per_s"]
    load = json.loads(sh([args.qv_bench, "--load", model, "--threads", str(args.threads), "--reps", "3"],
                         env=quiver_env(args, dot)).stdout)
    r["cold_load_to_first_token_s"] = load["load_and_first_token_s"]
    r["load_s"] = load["load_s"]
    return r


def batched_total_tok_s(out, plen):
    """S t/s (all tokens over the whole run) of llama-batched-bench's row |PP|TG|B|..."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0] == str(plen) and cells[2] == "32":
            return float(cells[-1])
    raise RuntimeError("llama-batched-bench printed no row for 32 sequences:\n" + out[-1500:])


def bench_llama(args, bins, gguf_path):
    r = {}
    out, _, _ = timed([os.path.join(bins, "llama-bench"), "-m", gguf_path, "-t", str(args.threads), "-p", "512",
                       "-n", str(args.gen), "-r", str(args.reps), "-o", "json"])
    for t in json.loads(out):
        if t.get("n_prompt") == 512 and t.get("n_gen") == 0:
            r["prefill512_tok_s"] = t["avg_ts"]
        if t.get("n_gen") == args.gen and t.get("n_prompt") == 0:
            r["decode_tok_s"] = t["avg_ts"]
    if args.long_ctx:
        out, _, _ = timed([os.path.join(bins, "llama-bench"), "-m", gguf_path, "-t", str(args.threads), "-p", "0",
                           "-n", str(args.gen), "-d", str(args.long_ctx), "-r", str(args.reps), "-o", "json"])
        r["decode_long_ctx_tok_s"] = json.loads(out)[0]["avg_ts"]
    tot = []
    rss = 0
    r["batch32_retries"] = 0
    for _ in range(args.reps):
        # On stories260K llama-batched-bench now and then prints its header and no row (exit
        # status 0); such a run is repeated, up to 3 times, and counted.
        for attempt in range(3):
            out, _, rss = timed([os.path.join(bins, "llama-batched-bench"), "-m", gguf_path, "-t", str(args.threads),
                                 "-c", str(32 * 2 * args.batch_len + 256), "-b", "2048", "-ub", "512", "-npp",
                                 str(args.batch_len), "-ntg", str(args.batch_len), "-npl", "32", "-kvu"])
            try:
                tot.append(batched_total_tok_s(out, args.batch_len))
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                r["batch32_retries"] += 1
    r["batch32_total_tok_s"] = statistics.median(tot)
    r["batch32_peak_rss_kb"] = rss
    walls = []
    for _ in range(3):
        _, wall, _ = timed([os.path.join(bins, "llama-bench"), "-m", gguf_path, "-t", str(args.threads), "-p", "0",
                            "-n", "1", "-r", "1", "--no-warmup"])
        walls.append(wall)
    r["cold_load_to_first_token_s"] = statistics.median(walls)
    return r


METRICS = ["decode_tok_s", "decode_pct_of_roofline", "decode_long_ctx_tok_s", "prefill512_tok_s", "prefill_gflops", "prefill_pct_of_fma_peak",
           "batch32_total_tok_s", "batch32_peak_rss_kb", "cold_load_to_first_token_s"]


def summarize(rows):
    """Medians over the rounds per (model, engine, weights), and each quiver entry's ratios to
    llama.cpp at the same weight dtype (decode, prefill, batch32: quiver / llama.cpp; RSS too)."""
    med = {}
    for r in rows:
        if "error" in r:
            continue
        k = (r["model"], r["engine"], r["weights"])
        for m in METRICS:
            if m in r:
                med.setdefault(k, {}).setdefault(m, []).append(r[m])
    out = []
    for (model, engine, weights), ms in med.items():
        e = {"model": model, "engine": engine, "weights": weights, "rounds": len(ms["decode_tok_s"])}
        e.update({m: statistics.median(v) for m, v in ms.items()})
        peer = med.get((model, "llama.cpp", weights.replace("+dot", "")))
        if engine == "quiver" and peer:
            for m in ["decode_tok_s", "decode_long_ctx_tok_s", "prefill512_tok_s", "batch32_total_tok_s",
                      "batch32_peak_rss_kb"]:
                if m in ms and m in peer:
                    e["vs_llama_" + m] = statistics.median(ms[m]) / statistics.median(peer[m])
        out.append(e)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--llama-types", default="f32,f16")
    ap.add_argument("--quiver", default=os.path.join(ROOT, "build", "release", "quiver"))
    ap.add_argument("--qv-bench", default=os.path.join(ROOT, "build", "release", "qv-bench-cpu"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                  f"cpu-vs-llama.cpp-{datetime.date.today()}.json"))
    ap.add_argument("--note", default="")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every engine/dtype pair this many times (order flipped each round); medians")
    ap.add_argument("--no-llama", action="store_true", help="quiver only (no llama.cpp build or runs)")
    ap.add_argument("--no-quiver", action="store_true", help="llama.cpp only")
    ap.add_argument("--gen", type=int, default=128, help="decode: tokens generated after a 16-token prompt")
    ap.add_argument("--batch-len", type=int, default=128, help="batch32: prompt and output tokens each")
    ap.add_argument("--long-ctx", type=int, default=0,
                    help="also decode --gen tokens after a prompt of this many tokens (llama-bench -d)")
    ap.add_argument("--quiver-flag", action="append", default=[],
                    help="extra flag for every `quiver bench engine` run (repeatable), e.g. --cpu-bf16-dot")
    ap.add_argument("--quiver-env", action="append", default=[],
                    help="KEY=VALUE set for every quiver process (repeatable), e.g. QUIVER_CPU_BF16_DOT=1")
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    src, bins = (None, None) if args.no_llama else llama_build()
    bw = json.loads(sh([args.qv_bench, "--threads", str(args.threads), "--reps", "5", "--mib", "1024", "--bandwidth"],
                       env=dict(os.environ, QUIVER_LOG="warn")).stdout)
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    res = {"tool": "bench/cpu/vs_llama_cpp.py", "date": datetime.datetime.utcnow().isoformat() + "Z",
           "commit": commit, "cpu": bw["cpu"], "threads": args.threads, "reps": args.reps,
           "read_gbps": bw["read_gbps"], "fma_peak_gflops": bw["fma_peak_gflops"], "pool_wake_us": bw["pool_wake_us"],
           "llama_cpp": LLAMA_PYPI + " (vendored llama.cpp, GGML_NATIVE=ON)",
           "gen": args.gen, "batch_len": args.batch_len, "long_ctx": args.long_ctx,
           "quiver_flags": args.quiver_flag, "quiver_env": args.quiver_env,
           "load_avg_start": os.getloadavg(), "note": args.note, "models": []}
    for spec in args.model:
        name, rest = spec.split("=", 1)
        dirs = [d.rsplit(":", 1) for d in rest.split(",")]
        # Entries of the same weight dtype run back to back (quiver's, then llama.cpp's; the
        # order flips every round), each pair after its own bandwidth measurement, so the VM's
        # drift in bandwidth and clock falls on both engines alike.
        groups = {}
        for d, dtype in ([] if args.no_quiver else dirs):
            groups.setdefault(dtype.replace("+dot", ""), []).append(("quiver", d, dtype))
        for t in ([] if args.no_llama else args.llama_types.split(",")):
            groups.setdefault(t, []).append(("llama.cpp", gguf(src, dirs[0][0], name, t), t))
        for rnd in range(args.rounds):
            for key, entries in groups.items():
                bw_j = json.loads(sh([args.qv_bench, "--bandwidth", "--threads", str(args.threads), "--reps", "3",
                                      "--mib", "1024"], env=dict(os.environ, QUIVER_LOG="warn")).stdout)
                bw_now, peak_now = bw_j["read_gbps"], bw_j["fma_peak_gflops"]
                for engine, path, dtype in (entries if rnd % 2 == 0 else entries[::-1]):
                    if engine == "quiver":
                        wbytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "*.safetensors")))
                        dot = dtype.endswith("+dot")
                        r = bench_quiver(args, path, dot)
                        if dot or args.quiver_flag or args.quiver_env:
                            r["quiver_mode"] = " ".join(args.quiver_flag + args.quiver_env +
                                                        (["--cpu-bf16-dot"] if dot else []))
                    else:
                        wbytes = os.path.getsize(path)
                        try:
                            r = bench_llama(args, bins, path)
                        except (RuntimeError, ValueError, IndexError) as e:  # the peer's failure is reported
                            res["models"].append({"model": name, "engine": engine, "weights": dtype, "round": rnd,
                                                  "error": str(e)[-800:]})
                            continue
                    r["read_gbps"] = bw_now
                    r["roofline_decode_tok_s"] = bw_now * 1e9 / wbytes
                    r["decode_pct_of_roofline"] = 100 * r["decode_tok_s"] / r["roofline_decode_tok_s"]
                    r["fma_peak_gflops"] = peak_now
                    fl = prefill_flops_per_token(dirs[0][0], r.get("prefill_len", 512))
                    if fl and "prefill512_tok_s" in r:
                        r["prefill_gflops"] = r["prefill512_tok_s"] * fl / 1e9

                    res["models"].append({"model": name, "engine": engine, "weights": dtype, "round": rnd,
                                          "weight_bytes": wbytes, **r, "load_avg": os.getloadavg()})
                    print(json.dumps(res["models"][-1]), flush=True)
    # The FMA peak is a ceiling: a lower reading means the VM lent less CPU at that moment, so
    # every entry's share is taken against the highest reading of the run.
    peaks = [res["fma_peak_gflops"]] + [r["fma_peak_gflops"] for r in res["models"] if "fma_peak_gflops" in r]
    res["fma_peak_gflops_max"] = max(peaks)
    for r in res["models"]:
        if "prefill_gflops" in r:
            r["prefill_pct_of_fma_peak"] = 100 * r["prefill_gflops"] / res["fma_peak_gflops_max"]
    res["summary"] = summarize(res["models"])
    print(json.dumps(res["summary"], indent=1), flush=True)
    res["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(args.out)


if __name__ == "__main__":
    main()
