"""Fixtures of the model families beyond Llama (imported by scripts/make-fixtures.py): tiny
random-weight Gemma 2, Gemma 3, Phi-3, Mixtral, Qwen3-MoE and gpt-oss checkpoints, each chosen so
that the family's features change the logits:

  gemma2             attention and final-logit soft-capping at caps the O(1) scores reach,
                     sliding window 4 (layer 0) < the 12-token prompt, query_pre_attn_scalar 12
  gemma3-multimodal  the same weights as a multimodal Gemma 3 checkpoint (text_config,
                     Gemma3ForConditionalGeneration, model.language_model.* names)
  gemma3             q/k norms, sliding layer 0 (window 4, rope base 10000) and global layer 1
                     (rope base 1e6 with linear scaling 2), classic config with
                     sliding_window_pattern 2 and rope_local_base_freq
  phi3-longrope-short  fused qkv/gate_up, partial rotary 0.5, longrope with
                     original_max_position_embeddings == max_position_embeddings: short factors;
                     sliding window 5 (Phi-3 applies its window to every layer)
  phi3-longrope-long   the same with original 8 < the prompt: transformers uses the long factors
                     for every call, quiver (whose choice is per model) too
  mixtral            top-2 of 4 experts, softmax then renormalised over the two
  qwen3-moe          top-2 of 4 with norm_topk_prob, q/k norms; layer 1 dense via mlp_only_layers
  qwen3-moe-nonorm   norm_topk_prob false, decoder_sparse_step 2 (layer 0 dense, layer 1 MoE)
  gpt-oss            router bias, expert biases, clamped SwiGLU, sinks, sliding layer 0 (window 4),
                     YaRN (truncate false), dense F32 experts as transformers saves them
  gpt-oss-mxfp4      the same with MXFP4 experts (U8 blocks + scales, quantization_config mxfp4);
                     the reference dequantizes them with transformers' own
                     integrations.mxfp4.convert_moe_packed_tensors

config.json is the classic form (rope_theta/rope_scaling at the top level, torch_dtype), built from
what transformers 5 wrote (kept as config.transformers5.json).
"""

import json
import math
import os
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file

BASE = dict(vocab_size=160, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)


def _phi3_factors(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [round(float(x), 4) for x in (1.0 + 3.0 * torch.rand(n, generator=g))]


FIXTURES = [
    dict(name="gemma2", cls="Gemma2", seed=201,
         hf=dict(BASE, tie_word_embeddings=True, query_pre_attn_scalar=12, sliding_window=4,
                 attn_logit_softcapping=2.0, final_logit_softcapping=5.0,
                 hidden_activation="gelu_pytorch_tanh", pad_token_id=0),
         rope=dict(rope_type="default", rope_theta=10000.0),
         must_matter=[{"attn_logit_softcapping": None}, {"final_logit_softcapping": None},
                      {"sliding_window": 4096}, {"query_pre_attn_scalar": 8}],
         note="Gemma 2: (1+w) norms, sandwich norms, gelu-tanh, embed*sqrt(32), softcaps 2 and 5, "
              "sliding layer 0 (window 4 < prompt 12), query_pre_attn_scalar 12"),
    dict(name="gemma3", cls="Gemma3Text", seed=202,
         hf=dict(BASE, tie_word_embeddings=True, query_pre_attn_scalar=8, sliding_window=4,
                 layer_types=["sliding_attention", "full_attention"], pad_token_id=0),
         rope={"sliding_attention": dict(rope_type="default", rope_theta=10000.0),
               "full_attention": dict(rope_type="linear", factor=2.0, rope_theta=1000000.0)},
         must_matter=[{"sliding_window": 4096}],
         note="Gemma 3: q/k norms, sliding layer 0 (window 4, base 1e4), global layer 1 "
              "(base 1e6, linear x2)"),
    dict(name="phi3-longrope-short", cls="Phi3", seed=203,
         hf=dict(BASE, head_dim=None, hidden_size=64, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64,
                 original_max_position_embeddings=64, pad_token_id=0, sliding_window=5),
         must_matter=[{"sliding_window": 4096}],
         rope=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                   short_factor=_phi3_factors(4, 1), long_factor=_phi3_factors(4, 2),
                   original_max_position_embeddings=64),
         note="Phi-3: fused qkv/gate_up, partial rotary 0.5, longrope within the original "
              "context (short factors), sliding window 5 on every layer"),
    dict(name="phi3-longrope-long", cls="Phi3", seed=204,
         hf=dict(BASE, head_dim=None, hidden_size=64, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64,
                 original_max_position_embeddings=8, pad_token_id=0),
         rope=dict(rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
                   short_factor=_phi3_factors(4, 1), long_factor=_phi3_factors(4, 2),
                   original_max_position_embeddings=8),
         note="Phi-3 longrope past the original context (8 < prompt 12): long factors, "
              "attention factor sqrt(1 + ln 8 / ln 8)"),
    dict(name="mixtral", cls="Mixtral", seed=205,
         hf=dict(BASE, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
         rope=dict(rope_type="default", rope_theta=1000000.0),
         note="Mixtral: top-2 of 4, softmax then renormalised"),
    dict(name="qwen3-moe", cls="Qwen3Moe", seed=206,
         hf=dict(BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                 norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1),
         rope=dict(rope_type="default", rope_theta=1000000.0),
         note="Qwen3-MoE: top-2 of 4, norm_topk_prob, layer 1 dense (mlp_only_layers)"),
    dict(name="qwen3-moe-nonorm", cls="Qwen3Moe", seed=207,
         hf=dict(BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                 norm_topk_prob=False, mlp_only_layers=[], decoder_sparse_step=2),
         rope=dict(rope_type="default", rope_theta=1000000.0),
         note="Qwen3-MoE: unnormalised top-2 weights, decoder_sparse_step 2 (layer 0 dense)"),
    dict(name="gpt-oss", cls="GptOss", seed=208,
         hf=dict(BASE, intermediate_size=32, head_dim=16, num_local_experts=4,
                 num_experts_per_tok=2, sliding_window=4,
                 layer_types=["sliding_attention", "full_attention"], attention_bias=True,
                 swiglu_limit=1.5, max_position_embeddings=256),
         rope=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                   beta_slow=1.0, truncate=False, original_max_position_embeddings=64),
         must_matter=[{"sliding_window": 4096}, {"swiglu_limit": 100.0}],
         note="gpt-oss: router/expert biases, clamped SwiGLU (limit 1.5 so the clamp bites), "
              "sinks, sliding layer 0 (window 4), yarn truncate=false, dense F32 experts"),
    dict(name="gpt-oss-mxfp4", cls="GptOss", seed=209, mxfp4=True,
         hf=dict(BASE, intermediate_size=32, head_dim=16, num_local_experts=4,
                 num_experts_per_tok=2, sliding_window=4,
                 layer_types=["sliding_attention", "full_attention"], attention_bias=True,
                 swiglu_limit=1.5, max_position_embeddings=256),
         rope=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                   beta_slow=1.0, truncate=False, original_max_position_embeddings=64),
         note="gpt-oss with MXFP4 experts (U8 blocks + E8M0 scales)"),
]


def _classes(cls):
    model = "Gemma3ForCausalLM" if cls == "Gemma3Text" else cls + "ForCausalLM"
    return getattr(transformers, cls + "Config"), getattr(transformers, model)


def _init(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Gemma's norms scale by (1 + w): keep them away from 0 either way.
                p.copy_(0.25 * torch.randn_like(p) + (0.0 if "Gemma" in type(model).__name__ else 1.0))
            elif name.endswith(".bias") or name.endswith("_bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("sinks"):
                p.copy_(torch.randn_like(p))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn_like(p))
            elif p.dim() == 3:
                # gpt-oss stores experts [E][in][out]; the others [E][out][in].
                fan_in = p.shape[1] if "GptOss" in type(model).__name__ else p.shape[2]
                p.copy_(torch.randn_like(p) / math.sqrt(fan_in))
            else:
                gain = 2.0 if (".q_proj." in name or ".k_proj." in name or "qkv_proj" in name
                               or "lm_head" in name or "gate.weight" in name or "router" in name) else 1.0
                p.copy_(gain * torch.randn_like(p) / math.sqrt(p.shape[1]))


def _classic(cfg5, fx):
    """transformers 5's config -> the classic keys real checkpoints ship."""
    c = dict(cfg5)
    rp = c.pop("rope_parameters", None) or {}
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    if fx["cls"] == "Gemma3Text":
        full, slid = rp["full_attention"], rp["sliding_attention"]
        c["rope_theta"] = full["rope_theta"]
        c["rope_local_base_freq"] = slid["rope_theta"]
        sc = {k: v for k, v in full.items() if k != "rope_theta"}
        c["rope_scaling"] = sc if sc.get("rope_type", "default") != "default" else None
        c.pop("layer_types", None)
        c["sliding_window_pattern"] = 2
    else:
        c["rope_theta"] = rp.get("rope_theta", 10000.0)
        sc = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if "partial_rotary_factor" in rp:
            c["partial_rotary_factor"] = rp["partial_rotary_factor"]
        c["rope_scaling"] = sc if sc.get("rope_type", "default") != "default" else None
    return c


def _to_mxfp4(outdir, fx, g):
    """Replaces the dense experts of model.safetensors by random MXFP4 blocks and scales."""
    path = os.path.join(outdir, "model.safetensors")
    sd = load_file(path)
    E = fx["hf"]["num_local_experts"]
    for name in list(sd):
        if not (name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj")):
            continue
        w = sd.pop(name)                          # [E][in][out]
        n_in, n_out = w.shape[1], w.shape[2]
        nb = n_in // 32
        blocks = torch.randint(0, 256, (E, n_out, nb, 16), generator=g, dtype=torch.int32).to(torch.uint8)
        # Scales 2^-5 .. 2^-3: e2m1 values up to 6 give O(1/sqrt(fan_in)) weights.
        scales = torch.randint(122, 125, (E, n_out, nb), generator=g, dtype=torch.int32).to(torch.uint8)
        sd[name + "_blocks"] = blocks.contiguous()
        sd[name + "_scales"] = scales.contiguous()
    save_file(sd, path, metadata={"format": "pt"})


def _reference_model_mxfp4(outdir, fx):
    """gpt-oss reference for MXFP4: the dense model with every expert weight replaced by
    transformers' own dequantization of the file's blocks and scales."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    cls_cfg, cls_model = _classes(fx["cls"])
    cfg = cls_cfg.from_pretrained(os.path.join(outdir, "ref-config"))
    model = cls_model(cfg).to(torch.float32)
    sd = load_file(os.path.join(outdir, "model.safetensors"))
    state = {}
    for name, t in sd.items():
        if name.endswith("_blocks"):
            base = name[:-len("_blocks")]
            deq = convert_moe_packed_tensors(t, sd[base + "_scales"], dtype=torch.bfloat16)
            state[base] = deq.float()
        elif not name.endswith("_scales"):
            state[name] = t.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing) or not missing, (missing, unexpected)
    model.eval()
    return model


def make(fx, root, mf):
    outdir = os.path.join(root, fx["name"])
    shutil.rmtree(outdir, ignore_errors=True)
    cls_cfg, cls_model = _classes(fx["cls"])
    kw = {k: v for k, v in fx["hf"].items() if v is not None or k in ("sliding_window",)}
    kw["rope_parameters"] = fx["rope"]
    cfg = cls_cfg(**kw)
    torch.manual_seed(fx["seed"])
    model = cls_model(cfg).to(torch.float32)
    _init(model)
    model.save_pretrained(outdir)
    os.replace(os.path.join(outdir, "config.json"), os.path.join(outdir, "config.transformers5.json"))
    with open(os.path.join(outdir, "config.transformers5.json")) as f:
        cfg5 = json.load(f)
    classic = _classic(cfg5, fx)
    ref_cfg_dir = None
    if fx.get("mxfp4"):
        # The reference config stays unquantized (transformers would need its GPU kernels).
        ref_cfg_dir = os.path.join(outdir, "ref-config")
        os.makedirs(ref_cfg_dir)
        with open(os.path.join(ref_cfg_dir, "config.json"), "w") as f:
            json.dump(cfg5, f, indent=2)
        _to_mxfp4(outdir, fx, torch.Generator().manual_seed(fx["seed"]))
        q = {"quant_method": "mxfp4",
             "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                        "model.embed_tokens", "lm_head"]}
        classic["quantization_config"] = q
        cfg5["quantization_config"] = q
        with open(os.path.join(outdir, "config.transformers5.json"), "w") as f:
            json.dump(cfg5, f, indent=2)
            f.write("\n")
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(classic, f, indent=2)
        f.write("\n")
    gen = {"bos_token_id": fx["hf"]["bos_token_id"], "eos_token_id": fx["hf"]["eos_token_id"],
           "do_sample": False, "transformers_version": transformers.__version__}
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")

    if fx.get("mxfp4"):
        ref_model = _reference_model_mxfp4(outdir, fx)
        real_from_pretrained = transformers.AutoModelForCausalLM.from_pretrained
        # reference() reloads with from_pretrained; hand it the dequantized model instead.
        mf.AutoModelForCausalLM.from_pretrained = staticmethod(lambda *a, **k: ref_model)
        try:
            ref_model, prompt, prefill, decode_ids, decode_logits = mf.reference(fx, outdir)
        finally:
            mf.AutoModelForCausalLM.from_pretrained = real_from_pretrained
        shutil.rmtree(ref_cfg_dir)
    else:
        ref_model, prompt, prefill, decode_ids, decode_logits = mf.reference(fx, outdir)
    assert ref_model.config.model_type == cfg5["model_type"]
    # Each feature must move the logits, or the fixture would not test it.
    for override in fx.get("must_matter", []):
        _, _, p2, _, _ = mf.reference(fx, outdir, override)
        e = mf.rel_err(p2, prefill)
        assert e > 1e-2, "%s: %r changes the prefill logits only by %g" % (fx["name"], override, e)
    n_params = ref_model.num_parameters()
    mf.write_reference(os.path.join(outdir, "reference.json"), fx, n_params, prompt, prefill,
                       decode_ids, decode_logits)
    size = sum(os.path.getsize(os.path.join(outdir, n)) for n in os.listdir(outdir))
    print("%-20s %7d bytes  prompt %s  decode %s" % (fx["name"], size, prompt, decode_ids))


def make_multimodal(root):
    """gemma3-multimodal: the gemma3 fixture as a multimodal Gemma 3 checkpoint ships its text
    model: config model_type gemma3 with the text config under text_config, weights under
    model.language_model. (transformers 5's naming). Same weights, so the same reference."""
    src, dst = os.path.join(root, "gemma3"), os.path.join(root, "gemma3-multimodal")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    sd = load_file(os.path.join(src, "model.safetensors"))
    sd = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
          for k, v in sd.items()}
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    for cfg_name in ("config.json", "config.transformers5.json"):
        with open(os.path.join(src, cfg_name)) as f:
            text = json.load(f)
        mm = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {k: v for k, v in text.items() if k != "architectures"},
              "eos_token_id": text.get("eos_token_id"), "bos_token_id": text.get("bos_token_id")}
        with open(os.path.join(dst, cfg_name), "w") as f:
            json.dump(mm, f, indent=2)
            f.write("\n")
    for n in ("generation_config.json", "reference.json"):
        shutil.copy(os.path.join(src, n), os.path.join(dst, n))
    print("%-20s (gemma3's weights and reference, multimodal layout)" % "gemma3-multimodal")


def make_all(root, only, mf):
    for fx in FIXTURES:
        if not only or fx["name"] in only:
            make(fx, root, mf)
    if not only or "gemma3" in only or "gemma3-multimodal" in only:
        make_multimodal(root)
