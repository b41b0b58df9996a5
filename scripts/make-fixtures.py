"""Generates tests/fixtures/models/: tiny random-weight Hugging Face checkpoints and their
float32 reference logits, which tests/unit/test_model_fixtures.c compares quiver's CPU backend
against and tests/unit/test_loader_fuzz.c corrupts.

Run through scripts/make-fixtures (which picks the interpreter from $QV_PYTHON). Needs the pip
packages: torch, transformers (5.x; 4.4x also writes the classic config form), safetensors,
numpy. CI never runs this; its output is committed.

Each fixture is a real HF directory (config.json, generation_config.json, model.safetensors or
two shards plus model.safetensors.index.json) and a reference.json:
  n_params                            parameters as HF counts them (tied embedding once)
config.transformers5.json is the config transformers 5 itself wrote (rope_parameters, dtype,
layer_types); the test loads the same weights with it in place of config.json.
  prompt_ids     [n_prompt]           random token ids
  prefill_logits [n_prompt][vocab]    logits of every prompt position, one full forward
  decode_ids     [8]                  greedy tokens: decode_ids[0] = argmax(prefill_logits[-1]),
                                      decode_ids[i] = argmax(decode_logits[i-1])
  decode_logits  [8][vocab]           logits after feeding decode_ids[i] at position
                                      n_prompt + i, computed one token at a time with HF's KV
                                      cache (so decode_logits[i] chose decode_ids[i+1])
The reference is computed by reloading the saved directory with from_pretrained in float32
(low-precision fixtures are therefore upcast from the saved bf16/f16 values, as quiver's CPU
backend does), with eager attention. That reload also proves HF reads the classic config.json
written here the way it was meant. Floats are written with 9 significant digits.
"""

import inspect
import json
import math
import os
import shutil
import sys

import torch
import transformers
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)
import families_fixtures

N_PROMPT = 12
N_DECODE = 8

# One entry per fixture folder. "hf" holds the config values; "rope" the classic rope_scaling
# dict (None for plain RoPE); "save" how the weights are written.
BASE = dict(vocab_size=160, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

FIXTURES = [
    dict(name="llama", family="llama", seed=101,
         hf=dict(BASE, vocab_size=256, hidden_size=64, intermediate_size=96, head_dim=16,
                 rope_theta=500000.0, eos_token_id=[2, 7]),
         note="GQA 4/2 heads, untied embeddings, eos_token_id as a list"),
    dict(name="llama-tied", family="llama", seed=102,
         hf=dict(BASE, tie_word_embeddings=True, num_key_value_heads=4),
         note="tied embeddings (no lm_head.weight in the file), MHA"),
    dict(name="llama-rope-llama3", family="llama", seed=103,
         hf=dict(BASE, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=16, max_position_embeddings=512),
         rope=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
         note="llama3 rope scaling; wavelengths fall in all three bands"),
    dict(name="llama-rope-yarn", family="llama", seed=104,
         hf=dict(BASE, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=256),
         rope=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64,
                   beta_fast=32.0, beta_slow=1.0),
         note="yarn rope scaling (attention factor 0.1 ln(4) + 1)"),
    dict(name="llama-rope-linear", family="llama", seed=105,
         hf=dict(BASE), rope=dict(rope_type="linear", factor=2.0),
         note="linear rope scaling"),
    dict(name="llama-bf16", family="llama", seed=106, hf=dict(BASE), dtype=torch.bfloat16,
         note="BF16 weights"),
    dict(name="llama-f16", family="llama", seed=107, hf=dict(BASE), dtype=torch.float16,
         note="F16 weights"),
    dict(name="llama-sharded", family="llama", seed=108, hf=dict(BASE), shards=2,
         note="two safetensors shards with model.safetensors.index.json"),
    dict(name="llama-bias", family="llama", seed=109, hf=dict(BASE, attention_bias=True),
         note="attention_bias: q/k/v/o biases"),
    dict(name="mistral-swa", family="mistral", seed=110,
         hf=dict(BASE, sliding_window=6, max_position_embeddings=256),
         note="sliding_window 6 < prompt + decode (20), so the window changes the logits"),
    dict(name="qwen2", family="qwen2", seed=111,
         hf=dict(BASE, rope_theta=1000000.0, tie_word_embeddings=True, sliding_window=8,
                 use_sliding_window=False, max_window_layers=2, eos_token_id=3),
         note="q/k/v biases without an attention_bias key; sliding_window 8 is present but "
              "use_sliding_window is false, so HF (and quiver) must ignore it"),
    dict(name="qwen3", family="qwen3", seed=112,
         hf=dict(BASE, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=8, intermediate_size=80, rope_theta=1000000.0, sliding_window=None,
                 use_sliding_window=False, max_window_layers=2, attention_bias=False),
         note="per-head q/k RMSNorm, head_dim 8 != hidden/heads 12"),
]

FAMILY = {
    "llama": (LlamaConfig, LlamaForCausalLM, "LlamaForCausalLM"),
    "mistral": (MistralConfig, MistralForCausalLM, "MistralForCausalLM"),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, "Qwen2ForCausalLM"),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, "Qwen3ForCausalLM"),
}

DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def classic_config(fx):
    """The config.json real checkpoints ship: rope_theta and rope_scaling at the top level
    (transformers 5 writes rope_parameters instead), torch_dtype rather than dtype."""
    family, hf = fx["family"], fx["hf"]
    cfg = {
        "architectures": [FAMILY[family][2]],
        "model_type": family,
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": hf["num_attention_heads"],
        "num_key_value_heads": hf["num_key_value_heads"],
        "head_dim": hf["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": hf["max_position_embeddings"],
        "initializer_range": 0.02,
        "rms_norm_eps": hf["rms_norm_eps"],
        "rope_theta": hf["rope_theta"],
        "rope_scaling": fx.get("rope"),
        "tie_word_embeddings": hf["tie_word_embeddings"],
        "attention_dropout": 0.0,
        "bos_token_id": hf["bos_token_id"],
        "eos_token_id": hf["eos_token_id"],
        "use_cache": True,
        "torch_dtype": DTYPE_NAME[fx.get("dtype", torch.float32)],
        "transformers_version": transformers.__version__,
    }
    if family == "llama":
        cfg["attention_bias"] = hf.get("attention_bias", False)
        cfg["mlp_bias"] = False
        cfg["pretraining_tp"] = 1
    elif family == "mistral":
        cfg["sliding_window"] = hf["sliding_window"]
    elif family == "qwen2":
        # Real Qwen2 configs carry no attention_bias key: the q/k/v biases are implied.
        cfg["sliding_window"] = hf["sliding_window"]
        cfg["use_sliding_window"] = hf["use_sliding_window"]
        cfg["max_window_layers"] = hf["max_window_layers"]
    elif family == "qwen3":
        cfg["attention_bias"] = hf["attention_bias"]
        cfg["sliding_window"] = hf["sliding_window"]
        cfg["use_sliding_window"] = hf["use_sliding_window"]
        cfg["max_window_layers"] = hf["max_window_layers"]
    return cfg


def build_model(fx):
    family, hf = fx["family"], fx["hf"]
    cls_cfg, cls_model, _ = FAMILY[family]
    kw = dict(hf)
    rope = {"rope_type": "default", "rope_theta": kw.pop("rope_theta")}
    if fx.get("rope"):
        rope.update(fx["rope"])
    kw["rope_parameters"] = rope
    cfg = cls_cfg(**kw)
    torch.manual_seed(fx["seed"])
    model = cls_model(cfg).to(torch.float32)
    # HF's default init (std 0.02, unit norms, zero biases) makes attention nearly uniform and
    # would hide bugs in RoPE, norms and biases; use O(1) activations and non-trivial norms.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn_like(p))
            else:
                gain = 2.0 if (".q_proj." in name or ".k_proj." in name or "lm_head" in name) else 1.0
                p.copy_(gain * torch.randn_like(p) / math.sqrt(p.shape[1]))
    return model


def fmt(x):
    return format(float(x), ".9g")


def rows_json(t):
    return "[\n" + ",\n".join("  [" + ", ".join(fmt(v) for v in row) + "]" for row in t.tolist()) + "\n ]"


def write_reference(path, fx, n_params, prompt, prefill, decode_ids, decode_logits):
    with open(path, "w") as f:
        f.write("{\n")
        f.write(' "fixture": %s,\n' % json.dumps(fx["name"]))
        f.write(' "note": %s,\n' % json.dumps(fx["note"]))
        f.write(' "generator": %s,\n' % json.dumps(
            "scripts/make-fixtures (transformers %s, torch %s, float32, eager attention)"
            % (transformers.__version__, torch.__version__)))
        f.write(' "n_params": %d,\n' % n_params)
        f.write(' "prompt_ids": %s,\n' % json.dumps(prompt))
        f.write(' "decode_ids": %s,\n' % json.dumps(decode_ids))
        f.write(' "prefill_logits": %s,\n' % rows_json(prefill))
        f.write(' "decode_logits": %s\n' % rows_json(decode_logits))
        f.write("}\n")


def rel_err(a, b):
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def reference(fx, outdir, cfg_override=None):
    model = AutoModelForCausalLM.from_pretrained(outdir, dtype=torch.float32,
                                                 attn_implementation="eager",
                                                 **(cfg_override or {}))
    model.eval()
    vocab = fx["hf"]["vocab_size"]
    g = torch.Generator().manual_seed(fx["seed"] * 7 + 3)
    prompt = torch.randint(3, vocab, (N_PROMPT,), generator=g).tolist()
    with torch.no_grad():
        # transformers >= 5.2x names the cache argument `cache`; older ones `past_key_values`.
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        out = model(torch.tensor([prompt]), use_cache=True)
        prefill = out.logits[0].float()
        cache = getattr(out, cache_kw, None) or out.past_key_values
        nxt = int(prefill[-1].argmax())
        decode_ids, decode_logits = [], []
        for _ in range(N_DECODE):
            decode_ids.append(nxt)
            out = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: cache})
            cache = getattr(out, cache_kw, None) or out.past_key_values
            row = out.logits[0, -1].float()
            decode_logits.append(row)
            nxt = int(row.argmax())
        decode_logits = torch.stack(decode_logits)
        # The incremental (cached) logits must agree with one full forward over everything.
        full = model(torch.tensor([prompt + decode_ids])).logits[0].float()
        e = rel_err(full[N_PROMPT:], decode_logits)
        assert e < 1e-5, "%s: cached vs full decode differ by %g" % (fx["name"], e)
    return model, prompt, prefill, decode_ids, decode_logits


def check_reloaded_config(fx, model):
    c = model.config
    assert c.model_type == fx["family"], c.model_type
    rp = c.rope_parameters
    want = fx.get("rope") or {"rope_type": "default"}
    for k, v in want.items():
        assert rp.get(k) == v, "%s: rope %s = %r, want %r" % (fx["name"], k, rp.get(k), v)
    assert rp["rope_theta"] == fx["hf"]["rope_theta"]
    assert c.head_dim == fx["hf"]["head_dim"]
    assert c.num_key_value_heads == fx["hf"]["num_key_value_heads"]
    if fx["family"] == "mistral":
        assert c.sliding_window == fx["hf"]["sliding_window"]
    if fx["family"] in ("qwen2", "qwen3"):
        assert c.sliding_window is None, "use_sliding_window false must disable the window"


def make(fx, root):
    outdir = os.path.join(root, fx["name"])
    shutil.rmtree(outdir, ignore_errors=True)
    model = build_model(fx)
    dtype = fx.get("dtype", torch.float32)
    model = model.to(dtype)
    kw = {}
    if fx.get("shards"):
        total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        kw["max_shard_size"] = int(total * 0.6)
    model.save_pretrained(outdir, **kw)
    # Keep what transformers itself wrote (rope_parameters, dtype, layer_types) so the loader's
    # other input form is tested on the same weights; config.json becomes the classic form.
    os.replace(os.path.join(outdir, "config.json"), os.path.join(outdir, "config.transformers5.json"))
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(classic_config(fx), f, indent=2)
        f.write("\n")
    gen = {"bos_token_id": fx["hf"]["bos_token_id"], "eos_token_id": fx["hf"]["eos_token_id"],
           "do_sample": False, "transformers_version": transformers.__version__}
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")
    files = sorted(os.listdir(outdir))
    st = [n for n in files if n.endswith(".safetensors")]
    if fx.get("shards"):
        assert len(st) == fx["shards"] and "model.safetensors.index.json" in files, files
    else:
        assert st == ["model.safetensors"], files
    if fx["hf"]["tie_word_embeddings"]:
        from safetensors import safe_open
        with safe_open(os.path.join(outdir, st[0]), "pt") as f:
            assert "lm_head.weight" not in f.keys()

    ref_model, prompt, prefill, decode_ids, decode_logits = reference(fx, outdir)
    check_reloaded_config(fx, ref_model)
    if fx["family"] == "mistral":
        # The window must matter: without it the logits are different.
        _, _, p2, _, _ = reference(fx, outdir, {"sliding_window": None})
        assert rel_err(p2, prefill) > 1e-2, "sliding window has no effect"
    # Parameters as HF counts them (a tied embedding once).
    n_params = ref_model.num_parameters()
    write_reference(os.path.join(outdir, "reference.json"), fx, n_params, prompt, prefill,
                    decode_ids, decode_logits)
    size = sum(os.path.getsize(os.path.join(outdir, n)) for n in os.listdir(outdir))
    print("%-18s %7d bytes  prompt %s  decode %s" % (fx["name"], size, prompt, decode_ids))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
    os.makedirs(root, exist_ok=True)
    torch.set_num_threads(1)
    only = set(os.environ.get("QV_FIXTURES", "").split(",")) - {""}
    for fx in FIXTURES:
        if not only or fx["name"] in only:
            make(fx, root)
    # Gemma 2/3, Phi-3, Mixtral, Qwen3-MoE, gpt-oss (scripts/families_fixtures.py).
    families_fixtures.make_all(root, only, sys.modules[__name__])


if __name__ == "__main__":
    main()
