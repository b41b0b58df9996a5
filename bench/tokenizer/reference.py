"""Reference side of qv-bench-tokenizer: times the Hugging Face `tokenizers` library (pip:
tokenizers) encoding one file as one string, single-threaded, without special-token parsing,
exactly like the quiver side. Prints "median_seconds n_ids fnv64hex" on one line.

usage: python reference.py TOKENIZER_PATH TEXT_FILE ITERS [document|lines]
(lines: one input per line through encode_batch, run with TOKENIZERS_PARALLELISM=false)
TOKENIZER_PATH may be a tokenizer.json or a model directory holding one."""
import os
import statistics
import sys
import time

from tokenizers import Tokenizer


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    try:
        return Tokenizer.from_file(path)
    except Exception:
        # Llama 2 exports with space-containing merges: resolve them as quiver does.
        import json
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        vocab = j["model"]["vocab"]
        fixed = []
        for m in j["model"]["merges"]:
            if isinstance(m, str):
                cuts = [i for i, c in enumerate(m) if c == " " and m[:i] in vocab and m[i + 1:] in vocab]
                fixed.append([m[:cuts[0]], m[cuts[0] + 1:]])
            else:
                fixed.append(m)
        j["model"]["merges"] = fixed
        return Tokenizer.from_str(json.dumps(j))


def main():
    tok = load(sys.argv[1])
    tok.encode_special_tokens = True
    with open(sys.argv[2], "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    iters = int(sys.argv[3])
    per_line = len(sys.argv) > 4 and sys.argv[4] == "lines"
    lines = text.split("\n")
    times, ids = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        if per_line:
            encs = tok.encode_batch(lines, add_special_tokens=False)
            times.append(time.perf_counter() - t0)
            ids = [i for e in encs for i in e.ids]
        else:
            ids = tok.encode(text, add_special_tokens=False).ids
            times.append(time.perf_counter() - t0)
    h = 0xcbf29ce484222325
    for i in ids:
        for k in range(4):
            h = ((h ^ ((i >> (8 * k)) & 0xFF)) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    print(f"{statistics.median(times):.6f} {len(ids)} {h:016x}")


if __name__ == "__main__":
    main()
