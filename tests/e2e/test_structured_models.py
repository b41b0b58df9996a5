"""Structured output from REAL models through real clients: the openai SDK's
`chat.completions.parse` with a Pydantic model, LangChain's `with_structured_output` (json_schema
and function_calling), and forced tool calls (tool_choice "required" and named) through Qwen's
own chat template, against a release `quiver serve` with SmolLM2-135M-Instruct (Q4_1) and
Qwen2.5-Coder-0.5B-Instruct. test_structured.py covers the same API surface on tiny models whose
text is noise; here the models are real, so the answers are also checked for sense where a
0.1-0.5B model gets them right at temperature 0 (a city named in the prompt, a tool argument).

The models come from scripts/fetch-models (scripts/test runs it first); the tests skip, saying
why, when a model is not in the cache. max_tokens is small everywhere so each test takes seconds."""
import enum
import json
from typing import Annotated, List

import jsonschema
import pytest
from pydantic import BaseModel, Field

from test_gguf_models import model_path, rel_bin, srv2  # noqa: F401  (rel_bin, srv2 are fixtures)


class Transport(str, enum.Enum):
    train = "train"
    plane = "plane"
    car = "car"


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Trip(BaseModel):
    """A short trip: nested model, enum, bounded integer and a list."""
    destination: City
    transport: Transport
    days: int = Field(ge=1, le=14)
    sights: List[Annotated[str, Field(max_length=24)]] = Field(max_length=3)


class Capital(BaseModel):
    country: str = Field(max_length=24)
    capital: str = Field(max_length=24)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]


@pytest.fixture(scope="module")
def srv(srv2):  # noqa: F811  (both models served at once, as test_gguf_models does)
    return srv2


def validate_call(call):
    fn = {t["function"]["name"]: t["function"] for t in TOOLS}[call.function.name]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, fn["parameters"])
    return args


@pytest.mark.parametrize("model", ["smollm2", "qwen"])
def test_openai_parse_pydantic(srv, model):
    c = srv.client()
    r = c.chat.completions.parse(
        model=model, temperature=0, max_tokens=120, response_format=Trip,
        messages=[{"role": "user", "content": "Plan a short trip to Paris, France. Answer in JSON."}])
    ch = r.choices[0]
    assert ch.finish_reason == "stop", ch
    trip = ch.message.parsed
    assert isinstance(trip, Trip), ch.message.content
    jsonschema.validate(json.loads(ch.message.content), Trip.model_json_schema())
    print(model, ch.message.content)
    if model == "qwen":  # SmolLM2 names some other city: valid, not sensible
        assert "paris" in trip.destination.name.lower(), trip


def test_openai_parse_sampled(srv):
    """Sampling (temperature, top_p) draws inside the mask too: every seed parses."""
    c = srv.client()
    for seed in range(3):
        r = c.chat.completions.parse(
            model="smollm2", temperature=1.0, top_p=0.95, seed=seed, max_tokens=120, response_format=Trip,
            messages=[{"role": "user", "content": "Plan a short trip somewhere in Europe."}])
        assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Trip), r


# json_schema on SmolLM2 (response_format); function_calling on Qwen: LangChain forces a named
# tool (tool_choice {"type": "function", ...}), Qwen's template renders it, the output is
# constrained to its Hermes call format, parsed back as tool_calls, and LangChain turns the
# arguments into the Pydantic object.
@pytest.mark.parametrize("model,method,country,capital", [("smollm2", "json_schema", "France", "paris"),
                                                          ("qwen", "function_calling", "Japan", "tokyo")])
def test_langchain_with_structured_output(srv, model, method, country, capital):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(base_url=srv.base + "/v1", api_key="none", model=model, temperature=0,
                        max_tokens=80, max_retries=0, timeout=120)
    out = llm.with_structured_output(Capital, method=method).invoke(f"What is the capital of {country}?")
    assert isinstance(out, Capital), out
    assert capital in out.capital.lower(), out


def test_qwen_forced_tool_calls(srv):
    c = srv.client()
    msg = [{"role": "user", "content": "I am flying to Berlin tomorrow."}]
    # "required" with parallel_tool_calls: one call per city, each valid against its schema
    # (the constraint lets Hermes blocks follow each other; the model stops after two).
    r = c.chat.completions.create(model="qwen", temperature=0, max_tokens=120, tools=TOOLS, tool_choice="required",
                                  parallel_tool_calls=True,
                                  messages=[{"role": "user", "content": "What is the weather in Paris and in Berlin?"}])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls, ch
    cities = sorted(validate_call(call)["city"].lower() for call in ch.message.tool_calls)
    assert cities == ["berlin", "paris"], ch.message.tool_calls
    # named: exactly that tool.
    r = c.chat.completions.create(model="qwen", temperature=0, max_tokens=80, messages=msg, tools=TOOLS,
                                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and [t.function.name for t in ch.message.tool_calls] == ["get_time"], ch
    assert "berlin" in validate_call(ch.message.tool_calls[0])["city"].lower()
    # "none": a weather question that would call the tool gets text instead.
    r = c.chat.completions.create(model="qwen", temperature=0, max_tokens=16, tools=TOOLS, tool_choice="none",
                                  messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls", r


def test_json_object_mode(srv):
    """response_format json_object (what litellm's JSON mode sends): any JSON object."""
    c = srv.client()
    r = c.chat.completions.create(model="smollm2", temperature=0, max_tokens=60,
                                  response_format={"type": "json_object"},
                                  messages=[{"role": "user", "content": "Give the name and age of a fictional "
                                                                        "person as JSON."}])
    ch = r.choices[0]
    assert ch.finish_reason == "stop", ch
    assert isinstance(json.loads(ch.message.content), dict), ch.message.content


# ---- the real vocabularies, without a server: `quiver constrain` over the GGUF's tokenizer ----

@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder"])
def test_masks_exact_on_real_vocabulary(rel_bin, tmp_path, name):  # noqa: F811
    """Every token outside the mask is refused and every token inside accepted, over the full
    49k/152k vocabulary, in the states the mask shortcuts serve (bounded and unbounded strings,
    a format, a pattern); then random walks over generated schemas validate with jsonschema."""
    from schema_gen import schemas
    from test_constrain import run, validate_all
    path = model_path(name)
    sch = [{"type": "string", "maxLength": 7}, {"type": "string", "minLength": 2, "maxLength": 40},
           {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 1},
           {"type": "string", "pattern": "^[a-z\\n]{1,9}$"}, {"type": "string"}]
    f = tmp_path / "exact.jsonl"
    f.write_text("\n".join(json.dumps(s) for s in sch) + "\n")
    rows, _ = run(rel_bin, ["--tokenizer", path, "--schemas", f, "--samples", 1, "--seed", 3,
                            "--verify-mask", 8, "--max-tokens", 40])
    validate_all(sch, rows)
    sch = schemas(30, seed=21)
    f = tmp_path / "fuzz.jsonl"
    f.write_text("\n".join(json.dumps(s) for s in sch) + "\n")
    rows, _ = run(rel_bin, ["--tokenizer", path, "--schemas", f, "--samples", 2, "--seed", 5, "--max-tokens", 300])
    assert len(rows) == 2 * len(sch), [r for r in rows if "error" in r][:3]
    done = validate_all(sch, rows)
    assert done >= 0.9 * len(rows), f"only {done}/{len(rows)} walks completed"
