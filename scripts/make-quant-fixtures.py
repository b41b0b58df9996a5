"""Expected dequantization of random blocks of every quant type quiver reads, computed by gguf-py
(the reference transformers uses to load GGUF files). Writes tests/fixtures/gguf/quant-blocks.json:
for each type, hex bytes of 2 blocks (random bytes, f16 scales replaced by small finite values)
and the floats gguf-py dequantizes them to. Usage: QV_PYTHON=... scripts/make-gguf-fixtures quant
(or run this file directly with an interpreter that has gguf and numpy)."""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# type: (block bytes, offsets of the f16 scales)
TYPES = {"Q8_0": (T.Q8_0, 34, [0]), "Q4_0": (T.Q4_0, 18, [0]), "Q4_1": (T.Q4_1, 20, [0, 2]),
         "Q5_0": (T.Q5_0, 22, [0]), "Q5_1": (T.Q5_1, 24, [0, 2]), "Q4_K": (T.Q4_K, 144, [0, 2]),
         "Q5_K": (T.Q5_K, 176, [0, 2]), "Q6_K": (T.Q6_K, 210, [208])}


def main():
    rng = np.random.default_rng(7)
    out = {}
    for name, (t, bb, offs) in TYPES.items():
        raw = rng.integers(0, 256, size=2 * bb, dtype=np.uint8)
        for b in range(2):
            for o in offs:
                h = np.array([rng.uniform(-1, 1) / 16], dtype=np.float16).view(np.uint8)
                raw[b * bb + o:b * bb + o + 2] = h
        vals = dequantize(raw, t).astype(np.float32).reshape(-1)
        out[name] = {"hex": raw.tobytes().hex(), "values": [float(v) for v in vals]}
    p = os.path.join(ROOT, "tests", "fixtures", "gguf", "quant-blocks.json")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def tiny_gguf(path, split):
    """A 1-layer Llama (dim 256, so K-quant rows fit) with random weights in a mix of every
    supported type, for the loader's fuzz tests: tests/fixtures/gguf/tiny-llama.gguf, and the
    same model as a split set of two files (split/tiny-llama-0000N-of-00002.gguf, metadata in the
    first, tensors divided between them) that must load to the same weights."""
    from gguf import GGUFWriter
    rng = np.random.default_rng(11)
    dim, ffn, n_head, n_kv, vocab = 256, 256, 4, 2, 64
    hd = dim // n_head
    w = GGUFWriter(path, "llama")
    if split:
        w.add_uint16("split.no", 0)
        w.add_uint16("split.count", 2)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def quant(name, rows, cols, qname):
        t, bb, offs = TYPES[qname]
        per = 256 if qname.endswith("_K") else 32
        nb = rows * cols // per
        raw = rng.integers(0, 256, size=nb * bb, dtype=np.uint8)
        for b in range(nb):
            for o in offs:
                raw[b * bb + o:b * bb + o + 2] = np.array([rng.uniform(-1, 1) / 16], dtype=np.float16).view(np.uint8)
        w.add_tensor(name, raw.reshape(rows, cols // per * bb), raw_shape=(rows, cols // per * bb), raw_dtype=t)

    def f32(name, n):
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    writers = [w]
    if split:
        w2 = GGUFWriter(path.replace("-00001-of-", "-00002-of-"), "llama")
        w2.add_uint16("split.no", 1)
        w2.add_uint16("split.count", 2)
        writers.append(w2)

    quant("token_embd.weight", vocab, dim, "Q8_0")
    f32("blk.0.attn_norm.weight", dim)
    quant("blk.0.attn_q.weight", dim, dim, "Q4_K")
    quant("blk.0.attn_k.weight", n_kv * hd, dim, "Q5_K")
    quant("blk.0.attn_v.weight", n_kv * hd, dim, "Q6_K")
    quant("blk.0.attn_output.weight", dim, dim, "Q4_0")
    f32("blk.0.ffn_norm.weight", dim)
    if split:
        w = w2
    quant("blk.0.ffn_gate.weight", ffn, dim, "Q4_1")
    quant("blk.0.ffn_up.weight", ffn, dim, "Q5_0")
    quant("blk.0.ffn_down.weight", dim, ffn, "Q5_1")
    f32("output_norm.weight", dim)
    w.add_tensor("output.weight", (0.05 * rng.standard_normal((vocab, dim))).astype(np.float16))
    for x in writers:
        x.write_header_to_file()
        x.write_kv_data_to_file()
        x.write_tensors_to_file()
        x.close()


if __name__ == "__main__":
    main()
    d = os.path.join(ROOT, "tests", "fixtures", "gguf")
    tiny_gguf(os.path.join(d, "tiny-llama.gguf"), False)
    os.makedirs(os.path.join(d, "split"), exist_ok=True)
    tiny_gguf(os.path.join(d, "split", "tiny-llama-00001-of-00002.gguf"), True)
