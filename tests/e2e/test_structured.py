"""Structured output end to end: response_format, vLLM's guided_* and structured_outputs,
forced tool calls, through the openai SDK (including `beta.chat.completions.parse` with
Pydantic models) and LangChain's `with_structured_output`, against a live `quiver serve` with
stories260K and quiver-tiny. The models' text is meaningless; it must still be valid per the
constraint. Bad inputs must be quick 400s that leave the server healthy."""
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, List, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

from test_server import Server


class Address(BaseModel):
    city: str = Field(max_length=16)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]
    tags: List[Annotated[str, Field(max_length=8)]] = Field(max_length=3)
    address: Address
    nickname: Optional[str] = Field(default=None, max_length=10)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def srv(quiver_bin, stories_dir):
    s = Server(quiver_bin, ["--model", f"stories={stories_dir}", "--model", "tiny=quiver-tiny",
                            "--max-model-len", "512"])
    yield s
    s.stop()


MSG = [{"role": "user", "content": "Tell me about a person."}]


def test_pydantic_parse(srv):
    c = srv.client()
    for model in ["stories", "tiny"]:
        for seed in range(3):
            r = c.chat.completions.parse(model=model, messages=MSG, response_format=Person,
                                              temperature=1.0, seed=seed, max_tokens=400)
            p = r.choices[0].message.parsed
            assert isinstance(p, Person), r
            assert r.choices[0].finish_reason == "stop"


def test_json_object_and_schema_on_completions(srv):
    c = srv.client()
    r = c.chat.completions.create(model="stories", messages=MSG, response_format={"type": "json_object"},
                                  max_tokens=300, temperature=0.8, seed=1)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"]}
    r = c.completions.create(model="stories", prompt="Once upon a time", max_tokens=64,
                             extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                 "name": "x", "schema": schema, "strict": True}}})
    jsonschema.validate(json.loads(r.choices[0].text), schema)


def test_vllm_guided_fields(srv):
    c = srv.client()
    r = c.completions.create(model="tiny", prompt="x", max_tokens=40,
                             extra_body={"guided_regex": r"[A-Z]{2}-\d{3,5}"})
    assert re.fullmatch(r"[A-Z]{2}-\d{3,5}", r.choices[0].text), r.choices[0].text
    r = c.completions.create(model="stories", prompt="The cat", max_tokens=10, n=3, temperature=1,
                             extra_body={"guided_choice": ["happy", "sad", "sleepy cat"]})
    assert all(ch.text in ("happy", "sad", "sleepy cat") for ch in r.choices)
    r = c.chat.completions.create(model="stories", messages=MSG, max_tokens=60,
                                  extra_body={"guided_grammar": 'root ::= "yes" | "no" | [0-9]{1,3}'})
    assert re.fullmatch(r"yes|no|[0-9]{1,3}", r.choices[0].message.content)
    r = c.chat.completions.create(model="stories", messages=MSG, max_tokens=60,
                                  extra_body={"guided_grammar": 'start: "a" B+\nB: "b" | "c"\n'})
    assert re.fullmatch(r"a[bc]+", r.choices[0].message.content) or r.choices[0].finish_reason == "length"
    schema = {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "maxItems": 4}
    r = c.chat.completions.create(model="stories", messages=MSG, max_tokens=60,
                                  extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=60,
                                  extra_body={"structured_outputs": {"choice": ["left", "right"]}})
    assert r.choices[0].message.content in ("left", "right")
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=60,
                                  extra_body={"structured_outputs": {"json": json.dumps(schema)}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_stream_and_length(srv):
    c = srv.client()
    schema = Person.model_json_schema()
    text = ""
    for ch in c.chat.completions.create(model="stories", messages=MSG, stream=True, max_tokens=400, seed=3,
                                        temperature=1.0, extra_body={"guided_json": schema}):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
    Person.model_validate_json(text)
    # A constraint that cannot finish within max_tokens ends with "length".
    r = c.chat.completions.create(model="stories", messages=MSG, max_tokens=3, extra_body={"guided_json": schema})
    assert r.choices[0].finish_reason == "length"


def test_seeded_constrained_is_deterministic_and_batches_with_unconstrained(srv):
    c = srv.client()
    kw = dict(model="stories", messages=MSG, max_tokens=200, temperature=1.0, seed=42,
              extra_body={"guided_json": Person.model_json_schema()})
    first = c.chat.completions.create(**kw).choices[0].message.content
    plain = dict(model="stories", prompt="Once upon a time", max_tokens=48, temperature=0)
    alone = c.completions.create(**plain).choices[0].text
    with ThreadPoolExecutor(16) as ex:
        cons = [ex.submit(c.chat.completions.create, **kw) for _ in range(8)]
        uncons = [ex.submit(c.completions.create, **plain) for _ in range(8)]
        assert all(f.result().choices[0].message.content == first for f in cons)
        assert all(f.result().choices[0].text == alone for f in uncons)
    srv.wait_idle()


def validate_call(call, tools):
    fn = {t["function"]["name"]: t["function"] for t in tools}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), fn["parameters"])


def test_forced_tool_calls(srv):
    c = srv.client()
    tools = [WEATHER, CLOCK]
    for model in ["stories", "tiny"]:
        for seed in range(3):
            r = c.chat.completions.create(model=model, messages=MSG, tools=tools, tool_choice="required",
                                          max_tokens=300, seed=seed, temperature=1.0)
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls" and ch.message.tool_calls, ch
            for call in ch.message.tool_calls:
                validate_call(call, tools)
        r = c.chat.completions.create(model=model, messages=MSG, tools=tools, max_tokens=300,
                                      tool_choice={"type": "function", "function": {"name": "get_time"}})
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls[0].function.name == "get_time"
        validate_call(ch.message.tool_calls[0], tools)
        r = c.chat.completions.create(model=model, messages=MSG, tools=tools, tool_choice="none", max_tokens=30)
        assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls"
    # streamed forced call
    calls = {}
    for chunk in c.chat.completions.create(model="stories", messages=MSG, tools=tools, stream=True,
                                           tool_choice="required", max_tokens=300, seed=5):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            e = calls.setdefault(d.index, {"name": "", "args": ""})
            e["name"] += d.function.name or ""
            e["args"] += d.function.arguments or ""
    assert calls
    for e in calls.values():
        fn = {t["function"]["name"]: t["function"] for t in tools}[e["name"]]
        jsonschema.validate(json.loads(e["args"]), fn["parameters"])
    bad = srv.post("/v1/chat/completions", {"model": "tiny", "messages": MSG, "tools": tools,
                                            "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert bad[0] == 400 and b"tool_choice" in bad[1]


def test_langchain_with_structured_output(srv):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(base_url=srv.base + "/v1", api_key="none", model="stories", temperature=1.0,
                        max_tokens=400, max_retries=0, timeout=120)
    for method in ["json_schema", "function_calling"]:
        out = llm.with_structured_output(Person, method=method).invoke("Describe a person.")
        assert isinstance(out, Person), (method, out)


BAD_BODIES = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}}, "not"),
    ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "hostname"}}}}, "hostname"),
    ({"guided_json": "{not json"}, "JSON"),
    ({"guided_json": {"enum": list(range(3000))}}, "enum"),
    ({"guided_regex": "(a{1000}){1000}"}, "large"),
    ({"guided_regex": "(?=a)b"}, "lookaround"),
    ({"guided_regex": "(((("}, "regex"),
    ({"guided_grammar": "root ::= root \"x\""}, "left-recursive"),
    ({"guided_grammar": "root ::= undefined_rule"}, "not defined"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": ["a", 1]}, "guided_choice"),
    ({"guided_json": {"type": "object"}, "guided_regex": "a"}, "conflicts"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structural_tag"),
    ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
]


def deep_schema(n):
    s = {"type": "string"}
    for _ in range(n):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s


def test_bad_inputs_are_quick_400s(srv):
    cases = BAD_BODIES + [({"guided_json": deep_schema(200)}, "deeper"),
                          ({"guided_json": {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}}, "left-recursive"),
                          ({"guided_json": {"type": "string", "pattern": "a" * 300000}}, "")]
    for extra, want in cases:
        for path, base in [("/v1/chat/completions", {"model": "stories", "messages": MSG}),
                           ("/v1/completions", {"model": "tiny", "prompt": "x"})]:
            t0 = time.time()
            st, body, _ = srv.post(path, {**base, **extra})
            assert st in (400, 413), (extra, st, body[:300])
            assert time.time() - t0 < 5, extra
            if st == 400:
                assert want.lower() in json.loads(body)["error"]["message"].lower() + json.loads(body)["error"]["param"].lower(), (extra, body)
    assert srv.health()[0] == 200


def test_fuzzed_schemas_never_crash(srv):
    """Seeded mutations of a real schema: every request is answered (200 or 400)."""
    import random
    rng = random.Random(7)
    base = json.dumps(Person.model_json_schema())
    for i in range(60):
        s = bytearray(base.encode())
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4:
                s[pos] = rng.choice(b'{}[]",:0123456789eE-\\ ')
            elif op < 0.7:
                del s[pos]
            else:
                s.insert(pos, rng.choice(b'{}[]",:'))
        st, body, _ = srv.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 16,
                                                   "guided_json": s.decode("utf-8", "replace")})
        assert st in (200, 400), (i, st, body[:200])
    assert srv.health()[0] == 200
    srv.wait_idle()
