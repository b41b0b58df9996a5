"""Constrained decoding over real tokenizers, checked by reference validators.

`quiver constrain` random-walks a constraint (tokens drawn uniformly among those the mask
allows, EOS once complete); every complete output must validate: Python's jsonschema for the
200+ generated schemas, `re.fullmatch` for regexes. The first steps of some walks also check
that every token outside the mask is refused by the matcher and every token inside accepted
(--verify-mask). Reachability: outputs re-tokenized the way the tokenizer encodes them are
accepted token by token with each token inside the mask (--check)."""
import json
import os
import re
import subprocess

import jsonschema
import pytest

from conftest import ROOT
from schema_gen import schemas

FIX = ROOT / "tests" / "fixtures" / "tokenizers"


def release_bin(quiver_bin):
    return os.environ.get("QV_BIN_RELEASE") or quiver_bin


def run(qbin, args, timeout=300):
    p = subprocess.run([qbin, "constrain"] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode in (0, 3), p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()], p


def texts(rows):
    out = []
    for d in rows:
        assert "error" not in d, d
        out.append((d.get("index", 0), bytes.fromhex(d["hex"]).decode("utf-8"), d["complete"]))
    return out


def tokenizers(shared_dir):
    t = [("qwen2-style", FIX / "qwen2-style"), ("metaspace-first", FIX / "metaspace-first")]
    stories = shared_dir / "models" / "stories260K"
    if stories.exists():
        t.append(("stories260K", stories))
    for name, f in [("llama2", "llama2.tokenizer.json"), ("phi-2", "phi-2.tokenizer.json"),
                    ("gpt-2-gguf", "ggml-vocab-gpt-2.gguf")]:
        if (shared_dir / "data" / "tokenizers" / f).exists():
            t.append((name, shared_dir / "data" / "tokenizers" / f))
    return t


FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def validate_all(sch_list, rows):
    n_complete = 0
    for idx, text, complete in texts(rows):
        if not complete:
            continue
        n_complete += 1
        inst = json.loads(text)
        jsonschema.Draft202012Validator(sch_list[idx], format_checker=FORMAT_CHECKER).validate(inst)
    return n_complete


SEEDS = {"qwen2-style": 1, "metaspace-first": 2, "stories260K": 3, "llama2": 4, "phi-2": 5, "gpt-2-gguf": 6}


@pytest.mark.parametrize("which", list(SEEDS))
def test_schema_fuzz(quiver_bin, shared_dir, tmp_path, which):
    """qwen2-style: 200 schemas; the others (real 32k-50k vocabularies among them) fewer."""
    toks = dict(tokenizers(shared_dir))
    if which not in toks:
        pytest.skip(f"{which} not available")
    n = {"qwen2-style": 200, "metaspace-first": 60, "stories260K": 60}.get(which, 25)
    sch = schemas(n, seed=SEEDS[which])
    f = tmp_path / "schemas.jsonl"
    f.write_text("\n".join(json.dumps(s) for s in sch) + "\n")
    rows, _ = run(release_bin(quiver_bin), ["--tokenizer", toks[which], "--schemas", f, "--samples", 2,
                                            "--seed", 7, "--max-tokens", 300])
    assert len(rows) == 2 * n, [r for r in rows if "error" in r][:3]
    done = validate_all(sch, rows)
    assert done >= 0.9 * len(rows), f"only {done}/{len(rows)} walks completed"


def test_schema_mask_exact(quiver_bin, tmp_path):
    """Every token outside the mask is refused and every token inside accepted, for the first
    steps of walks over a few schemas (full vocabulary each step)."""
    sch = schemas(6, seed=11) + [
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 5}, "t": {"type": "string"},
                                          "u": {"type": "string", "pattern": "^[a-z ]{0,6}x$"}},
         "required": ["s", "t", "u"]}]
    f = tmp_path / "schemas.jsonl"
    f.write_text("\n".join(json.dumps(s) for s in sch) + "\n")
    rows, _ = run(release_bin(quiver_bin), ["--tokenizer", FIX / "llama3-style", "--schemas", f, "--samples", 1,
                                            "--verify-mask", 24, "--max-tokens", 200])
    validate_all(sch, rows)


REGEXES = [r"[a-z]{3,6}", r"\d{3}-\d{2}-\d{4}", r"(cat|dog|bird)s?", r"[A-Z][a-z]*( [A-Z][a-z]*){0,3}",
           r"-?(0|[1-9]\d*)(\.\d+)?", r"[^\n]{1,20}", r"\w+@\w+\.(com|org)", r"(ab|cd)*e",
           r"[\u00e0-\u00ff]{2,5}", r"x(?:yz){2,3}", r"(?<year>\d{4})-(0[1-9]|1[0-2])", r"[.?!]+",
           r"\s?[a-c]+\s?", r"[\[\]{}()]{1,4}", r"(a|b|c|d|e|f|g)+[0-9]?", r"\x41\u0042C"]


ECMA_WS = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"


def ecma_to_py(pat):
    """ECMAScript regex semantics in Python's re: named groups, \\s (ECMAScript's set has U+FEFF)."""
    return pat.replace("(?<", "(?P<").replace("\\s", "[" + ECMA_WS + "]")


@pytest.mark.parametrize("which", ["qwen2-style", "stories260K", "llama2", "phi-2"])
def test_regex_fuzz(quiver_bin, shared_dir, which):
    toks = dict(tokenizers(shared_dir))
    if which not in toks:
        pytest.skip(f"{which} not available")
    pats = REGEXES if which in ("qwen2-style", "stories260K") else REGEXES[::3]  # large vocabularies: a sample
    for i, pat in enumerate(pats):
        rows, _ = run(release_bin(quiver_bin), ["--tokenizer", toks[which], "--regex", pat, "--samples", 8,
                                                "--seed", i, "--max-tokens", 100])
        for _, text, complete in texts(rows):
            if complete:
                assert re.fullmatch(ecma_to_py(pat), text), (pat, text)


def arith_ok(t):
    """Recognizer for the GBNF below: expr = term (("+"|"-") term)*, term = digits | "(" expr ")"."""
    pos = 0

    def term():
        nonlocal pos
        if pos < len(t) and t[pos] == "(":
            pos += 1
            if not expr() or pos >= len(t) or t[pos] != ")":
                return False
            pos += 1
            return True
        start = pos
        while pos < len(t) and t[pos].isdigit():
            pos += 1
        return pos > start

    def expr():
        nonlocal pos
        if not term():
            return False
        while pos < len(t) and t[pos] in "+-":
            pos += 1
            if not term():
                return False
        return True

    return expr() and pos == len(t)


def test_choice_and_grammars(quiver_bin):
    q = release_bin(quiver_bin)
    tok = FIX / "qwen2-style"
    choices = ["yes", "no", "maybe not", "ünïcode ✓"]
    args = ["--tokenizer", tok, "--samples", 20, "--max-tokens", 60]
    rows, _ = run(q, args + sum([["--choice", c] for c in choices], []))
    got = {t for _, t, c in texts(rows) if c}
    assert got <= set(choices) and len(got) >= 2
    gbnf = ('root ::= expr\nexpr ::= term (("+" | "-") term)*\n'
            'term ::= [0-9]+ | "(" expr ")"   # parenthesised\n')
    g = tok.parent / "unused"
    del g
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        gf = os.path.join(d, "g.gbnf")
        open(gf, "w").write(gbnf)
        rows, _ = run(q, args + ["--gbnf", gf])
        for _, t, c in texts(rows):
            if c:
                assert arith_ok(t), t
        lf = os.path.join(d, "g.lark")
        open(lf, "w").write('start: pair ("," pair)*\npair: WORD "=" (INT | ESCAPED_STRING)\n'
                            "%import common.WORD\n%import common.INT\n%import common.ESCAPED_STRING\n")
        rows, _ = run(q, args + ["--lark", lf])
        for _, t, c in texts(rows):
            if c:
                assert re.fullmatch(r'[a-zA-Z]+=([0-9]+|"([^"\\\n]|\\.)*")(,[a-zA-Z]+=([0-9]+|"([^"\\\n]|\\.)*"))*', t), t


def test_reachability(quiver_bin, tmp_path):
    """Valid outputs, tokenized as the tokenizer encodes text, are accepted token by token."""
    q = release_bin(quiver_bin)
    tok = FIX / "qwen2-style"
    sch = schemas(30, seed=5)
    f = tmp_path / "schemas.jsonl"
    f.write_text("\n".join(json.dumps(s) for s in sch) + "\n")
    rows, _ = run(q, ["--tokenizer", tok, "--schemas", f, "--samples", 1, "--max-tokens", 300])
    by_idx = {}
    for idx, text, complete in texts(rows):
        if complete:
            by_idx.setdefault(idx, []).append(text)
    checked = 0
    for idx, outs in list(by_idx.items())[:15]:
        sf = tmp_path / f"s{idx}.json"
        sf.write_text(json.dumps(sch[idx]))
        cf = tmp_path / f"c{idx}.jsonl"
        # the walk's own output, and a re-serialisation in the same compact layout
        cands = outs + [json.dumps(json.loads(o), ensure_ascii=False) for o in outs]
        cands = [c for c in cands if "Infinity" not in c and "NaN" not in c]
        cf.write_text("\n".join(json.dumps(c) for c in cands) + "\n")
        res, _ = run(q, ["--tokenizer", tok, "--schema", sf, "--check", cf])
        assert all(r["ok"] for r in res), (sch[idx], cands, res)
        checked += len(res)
    assert checked >= 20
    # Hand-written strings for regex and JSON too.
    cf = tmp_path / "r.jsonl"
    cf.write_text("\n".join(json.dumps(s) for s in ["abc-123", "zz-0"]) + "\n")
    res, _ = run(q, ["--tokenizer", tok, "--regex", r"[a-z]+-[0-9]+", "--check", cf])
    assert all(r["ok"] for r in res), res
    cf.write_text(json.dumps('{"a": [1, 2.5, "x\\u00e9"], "b": {"c": null}}') + "\n")
    res, _ = run(q, ["--tokenizer", tok, "--json", "--check", cf])
    assert res[0]["ok"], res


BAD = [
    ({"type": "object", "not": {"type": "string"}}, "'not'"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "format": "hostname"}, "hostname"),
    ({"$ref": "http://example.com/s.json"}, "$ref"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "empty"),
    ({"enum": list(range(5000))}, "enum"),
    ({"type": "string", "pattern": "(a{1000}){1000}"}, "large"),
    ({"type": "string", "pattern": "(?=x)y"}, "lookaround"),
    ({"type": "string", "pattern": "(a)\\1"}, "backreference"),
    ({"type": "wizard"}, "wizard"),
]


def test_bad_schemas(quiver_bin, tmp_path):
    q = release_bin(quiver_bin)
    deep = {"type": "string"}
    for _ in range(60):
        deep = {"type": "object", "properties": {"a": deep}}
    cases = BAD + [(deep, "deeper")]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(json.dumps(s) for s, _ in cases) + "\n{not json\n")
    rows, _ = run(q, ["--tokenizer", FIX / "qwen2-style", "--schemas", f, "--samples", 1])
    errs = {r["index"]: r for r in rows if "error" in r}
    for i, (_, want) in enumerate(cases):
        assert i in errs, (i, cases[i])
        assert want.lower() in errs[i]["error"].lower(), (want, errs[i])
    assert len(cases) in errs and "json" in errs[len(cases)]["error"].lower()


def test_long_rules_compile(quiver_bin, tmp_path):
    """A 50,000-element GBNF rule and a 20,000-piece regex compile (no recursion per element)."""
    q = release_bin(quiver_bin)
    g = tmp_path / "long.gbnf"
    g.write_text("root ::= " + " ".join(['"ab"'] * 50000) + "\n")
    rows, p = run(q, ["--tokenizer", FIX / "qwen2-style", "--gbnf", g, "--samples", 1, "--max-tokens", 8])
    assert p.returncode == 0 and rows[0]["hex"].startswith("6162"), rows
    rows, p = run(q, ["--tokenizer", FIX / "qwen2-style", "--regex", "[xy]" * 20000, "--samples", 1, "--max-tokens", 8])
    assert p.returncode == 0 and not rows[0].get("error"), rows


def test_bad_grammars(quiver_bin, tmp_path):
    q = release_bin(quiver_bin)
    for text, want in [("root ::= root \"a\" | \"b\"", "left-recursive"), ("root ::= foo", "not defined"),
                       ("rot ::= \"a\"", "root"), ("root ::= \"unterminated", "unterminated"),
                       ("root ::= [z-a]", "order")]:
        g = tmp_path / "g.gbnf"
        g.write_text(text)
        rows, p = run(q, ["--tokenizer", FIX / "qwen2-style", "--gbnf", g])
        assert p.returncode == 3 and want in rows[0]["error"], (text, rows)
