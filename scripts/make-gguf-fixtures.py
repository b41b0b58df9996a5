"""Reference outputs of transformers on the real GGUF models (scripts/models.json), for the
fidelity tests of quiver's GGUF loader (tests/e2e/test_gguf_models.py).

transformers loads each file with from_pretrained(dir, gguf_file=...), which dequantizes every
tensor to float32 with gguf-py (and un-permutes Llama's q/k rows). For each model it writes
tests/fixtures/gguf/<name>.json:
  - logit_prompts: prompts of 8..300 tokens (ids from transformers' tokenizer); for a few rows
    of each, the row's max|logit| and the logits at a fixed set of indices (the row's top 64 and
    192 indices drawn from a seeded RNG), so the file stays small while the test still checks
    the error against max|b| over a few hundred vocabulary entries per row;
  - greedy: 10 chat prompts (the file's own chat template; a base model without one: a few
    plain prompts with BOS), their ids and 64 greedily chosen
    tokens each, computed as one left-padded batch with the KV cache and no stop on EOS;
  - tokenize: a few texts and transformers' ids for them (checks quiver's GGUF tokenizer).
Needs torch, transformers, accelerate, gguf, numpy. Usage:
  QV_PYTHON=/work/pyref/venv/bin/python scripts/make-gguf-fixtures [NAME...]
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
MODELS = ["smollm2", "qwen2.5-coder", "gemma3-270m"]
# Gemma 3 270M is a base model whose file has no chat template: its greedy prompts are plain
# text with the BOS transformers' tokenizer adds, led by the issue's "The capital of France is".
# Its sliding window is 512 tokens, so one logit prompt (600 tokens) runs past it.
RAW_PROMPTS = {"gemma3-270m": ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
                               "The three primary colors are"]}
EXTRA_LENGTHS = {"gemma3-270m": (600,)}

TEXT = (
    "The history of the lighthouse is a story of engineering, commerce and a great deal of "
    "weather. Early lights were simple fires on hills; by the nineteenth century, lenses "
    "designed by Augustin Fresnel could throw a beam more than twenty miles. Keepers lived "
    "in small stone houses, trimmed wicks, wound clockwork and kept logs of every passing ship. "
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "Electric lamps arrived late in the century, and automation followed in the twentieth, so "
    "that today almost no lighthouse has a resident keeper. Many towers are now museums; some "
    "still guide ships, their beams switched by light sensors and monitored from far away. "
    "Numbers: 3.14159, 2,718, 1e-9, 0xFF; symbols: <>[]{}()!?#@%^&*; accents: café, naïve, "
    "Zürich, São Paulo; CJK: 灯台の歴史; emoji: 🚢🌊. "
)

GREEDY_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "List three primary colors.",
    "Explain in one sentence what a hash table is.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Write a haiku about the sea.",
    "Give me a SQL query that counts the rows of a table named users.",
    "Who wrote Romeo and Juliet?",
    "Suggest a name for a pet turtle.",
]

TOKENIZE_TEXTS = [
    "Hello world",
    " leading space and  double  spaces\nnew line\ttab",
    "café naïve Zürich 灯台 🚢 1234567 3.14",
    "def f(x):\n    return x ** 2  # square\n",
]


def catalog_path(name):
    r = subprocess.run([os.path.join(ROOT, "scripts", "fetch-models"), name], check=True, capture_output=True, text=True)
    return r.stdout.split()[-1]


def row_sample(row, rng_idx):
    top = np.argsort(-row)[:64]
    idx = sorted(set(top.tolist()) | set(rng_idx.tolist()))
    r64 = row.astype(np.float64)
    lse = float(np.log(np.exp(r64 - r64.max()).sum()) + r64.max())
    return {"max_abs": float(np.abs(row).max()), "logsumexp": lse, "idx": idx, "val": [float(row[i]) for i in idx]}


@torch.no_grad()
def make(name):
    path = catalog_path(name)
    d, f = os.path.dirname(path), os.path.basename(path)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    print(f"{name}: loaded in {time.time() - t0:.0f}s", file=sys.stderr)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1234)
    full = tok(TEXT * 4, add_special_tokens=False).input_ids
    if name in RAW_PROMPTS:
        full = [tok.bos_token_id] + full  # Gemma is trained with BOS first; without it activations blow up
    out = {"model": name, "file": f, "transformers": __import__("transformers").__version__,
           "logit_prompts": [], "greedy": [], "tokenize": []}
    for n in (8, 37, 120, 300) + EXTRA_LENGTHS.get(name, ()):
        ids = full[:n]
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        rows = sorted({0, n // 2, n - 1})
        samples = []
        for r in rows:
            rng_idx = rng.choice(vocab, size=192, replace=False)
            s = row_sample(logits[r], rng_idx)
            s["row"] = r
            samples.append(s)
        out["logit_prompts"].append({"ids": ids, "rows": samples})
        print(f"{name}: logits of {n} tokens", file=sys.stderr)
    # The 10 greedy prompts run as one left-padded batch with the KV cache (masked padding and
    # explicit positions), 64 steps without stopping at EOS.
    prompts = []
    for q in RAW_PROMPTS.get(name, GREEDY_PROMPTS):
        if name in RAW_PROMPTS:
            prompts.append((q, q, tok(q).input_ids))
            continue
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        prompts.append((q, text, tok(text, add_special_tokens=False).input_ids))
    width = max(len(p[2]) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p[2])) + p[2] for p in prompts])
    mask = torch.tensor([[0] * (width - len(p[2])) + [1] * len(p[2]) for p in prompts])
    past, cur, gen = None, ids, [[] for _ in prompts]
    for step in range(64):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -cur.shape[1]:]
        o = model(cur, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
        past = o.past_key_values
        nxt = torch.argmax(o.logits[:, -1], dim=-1)
        for i, t in enumerate(nxt.tolist()):
            gen[i].append(t)
        cur = nxt[:, None]
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
    for (q, text, pid), g in zip(prompts, gen):
        out["greedy"].append({"prompt": q, "text": text, "ids": pid, "generated": g, "generated_text": tok.decode(g)})
        print(f"{name}: greedy {q!r} -> {tok.decode(g)[:60]!r}", file=sys.stderr)
    for t in TOKENIZE_TEXTS:
        out["tokenize"].append({"text": t, "ids": tok(t, add_special_tokens=False).input_ids})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as fh:
        json.dump(out, fh, separators=(",", ":"), ensure_ascii=False)
        fh.write("\n")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    for name in sys.argv[1:] or MODELS:
        make(name)


if __name__ == "__main__":
    main()
