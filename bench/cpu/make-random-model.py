"""Writes a random-weight Llama checkpoint with Qwen2-0.5B's layer shapes (hidden 896, 14 heads,
2 KV heads, head dim 64, FFN 4864) and 32 layers (~0.48B parameters), borrowing stories260K's
tokenizer (vocabulary 512) so llama.cpp's converter accepts it. For speed measurements only:
its text is meaningless. Usage: make-random-model.py SHARED_STORIES_DIR OUT_DIR DTYPE(bf16|f16|f32)"""
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

src, out, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=512, hidden_size=896, intermediate_size=4864, num_hidden_layers=32,
                  num_attention_heads=14, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=1,
                  eos_token_id=2)
with torch.no_grad():
    model = LlamaForCausalLM(cfg).to({"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype])
model.save_pretrained(out, safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{src}/{f}", f"{out}/{f}")
print(out, sum(p.numel() for p in model.parameters()))
