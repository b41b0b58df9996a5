"""The API dialects end to end: Anthropic's Messages API driven by the anthropic SDK, OpenAI's
Responses API by the openai SDK and LangChain, the chat/completions fields real clients send,
and fuzzed bodies for both new endpoints. Models: stories260K (greedy outputs of the dialects
are compared with the chat-completions path for the same conversation), the same weights with
Qwen2.5's chat template (tools), and quiver-tiny. Every server stops with SIGTERM and must exit
0 (under ASan: no leaks)."""
import json
import os
import random
import tempfile
from pathlib import Path

import anthropic
import openai
import pytest

from test_server import Server, raw, status_of


@pytest.fixture(scope="module")
def srv(quiver_bin, stories_dir, shared_dir, tmp_path_factory):
    """stories (no template), qstories (Qwen2.5's template: tools), tiny; one API key."""
    models = [{"name": "stories", "path": str(stories_dir)},
              {"name": "tiny", "path": "quiver-tiny", "max_model_len": 256}]
    tmpl = shared_dir / "data" / "chat-templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    if tmpl.exists():
        d = tmp_path_factory.mktemp("qstories")
        for f in ("generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json"):
            (d / f).symlink_to(stories_dir / f)
        # The template's tool preamble is longer than stories260K's 512 positions; RoPE has no
        # table, so the same weights serve 1024.
        conf = json.loads((stories_dir / "config.json").read_text())
        conf["max_position_embeddings"] = 1024
        (d / "config.json").write_text(json.dumps(conf))
        (d / "chat_template.jinja").write_text(tmpl.read_text())
        models.append({"name": "qstories", "path": str(d)})
    cfg = {"models": models, "api_keys": ["sk-test"]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    s = Server(quiver_bin, ["--config", f.name])
    s.has_tools_model = tmpl.exists()
    yield s
    s.stop()
    os.unlink(f.name)


def ant(s, key="sk-test"):
    return anthropic.Anthropic(base_url=s.base, api_key=key, max_retries=0, timeout=120)


def oai(s, key="sk-test"):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, max_retries=0, timeout=120)


AUTH = {"Authorization": "Bearer sk-test"}
# anthropic 2.x's messages.create has no temperature parameter (its beta.messages.create has);
# greedy requests send it as an extra body field, as the SDK allows.
GREEDY = {"extra_body": {"temperature": 0}}


def chat_text(s, model, messages, **kw):
    r = oai(s).chat.completions.create(model=model, messages=messages, temperature=0, **kw)
    return r.choices[0].message.content, r.choices[0].finish_reason


# ---- NUL characters (U+0000) end to end ----

NUL = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "nul.json")
                 .read_text(encoding="utf-8"))


def test_nul_prompts_match_reference(srv):
    """A \\u0000 in a prompt reaches the tokenizer as the byte 0: the ids are the Hugging Face
    tokenizer's (fixture), on /tokenize and in completions usage; echo gives the text back."""
    for p in NUL["prompts"]:
        st, out, _ = srv.post("/tokenize", {"model": "stories", "prompt": p["text"],
                                            "add_special_tokens": False}, AUTH)
        assert st == 200 and json.loads(out)["tokens"] == p["ids"], (p, out)
        st, out, _ = srv.post("/v1/completions", {"model": "stories", "prompt": p["text"],
                                                  "max_tokens": 2, "echo": True,
                                                  "temperature": 0}, AUTH)
        j = json.loads(out)
        assert st == 200 and j["usage"]["prompt_tokens"] == len(p["ids"]) + 1, (p, j)  # + BOS
        assert j["choices"][0]["text"].startswith(p["text"]), j
    # Token-id prompts echo their NUL bytes; generated NULs (forced by logit_bias on <0x00>,
    # id 3) come back as \\u0000, in text, logprobs and streamed deltas.
    st, out, _ = srv.post("/v1/completions", {"model": "stories", "prompt": [261, 3, 430],
                                              "max_tokens": 1, "echo": True}, AUTH)
    assert st == 200 and json.loads(out)["choices"][0]["text"].startswith("a\x00b"), out
    force = {"model": "stories", "max_tokens": 3, "logit_bias": {"3": 100}}
    r = oai(srv).completions.create(prompt="a", logprobs=1, **force)
    assert r.choices[0].text == "\x00" * 3 and r.choices[0].logprobs.tokens == ["\x00"] * 3
    m = [{"role": "user", "content": "a\x00b"}]
    r = oai(srv).chat.completions.create(messages=m, logprobs=True, **force)
    assert r.choices[0].message.content == "\x00" * 3
    assert [t.bytes for t in r.choices[0].logprobs.content] == [[0]] * 3
    chunks = oai(srv).chat.completions.create(messages=m, stream=True, **force)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "\x00" * 3
    st, out, _ = srv.post("/detokenize", {"model": "stories", "tokens": [261, 3, 430]}, AUTH)
    assert st == 200 and json.loads(out)["prompt"] == "a\x00b", out


def test_nul_messages_all_dialects(srv):
    """The same conversation with NULs builds the reference prompt (Qwen2.5's template rendered
    by jinja2, encoded by the HF tokenizer) on chat completions, Messages (count_tokens and
    create) and Responses, and greedy outputs agree across the three. Where NUL is unsafe
    (model names, object keys, stop strings) it stays a 400 naming the field."""
    if not srv.has_tools_model:
        pytest.skip("no Qwen2.5 template in ../shared")
    want = len(NUL["chat"]["ids"])
    system, user = NUL["chat"]["messages"][0]["content"], NUL["chat"]["messages"][1]["content"]
    st, out, _ = srv.post("/tokenize", {"model": "qstories", "messages": NUL["chat"]["messages"]},
                          AUTH)
    assert st == 200 and json.loads(out)["tokens"] == NUL["chat"]["ids"], out
    r = oai(srv).chat.completions.create(model="qstories", messages=NUL["chat"]["messages"],
                                         max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == want
    chat = r.choices[0].message.content
    c = ant(srv)
    amsgs = [{"role": "user", "content": user}]
    assert c.messages.count_tokens(model="qstories", system=system, messages=amsgs).input_tokens == want
    a = c.messages.create(model="qstories", max_tokens=8, system=system, messages=amsgs, **GREEDY)
    assert a.usage.input_tokens + a.usage.cache_read_input_tokens == want
    assert "".join(b.text for b in a.content if b.type == "text") == chat
    x = oai(srv).responses.create(model="qstories", instructions=system, input=user,
                                  max_output_tokens=8, temperature=0)
    assert x.usage.input_tokens == want and x.output_text == chat
    for path, body in [("/v1/chat/completions", {"model": "qst\x00ories", "messages": amsgs}),
                       ("/v1/messages", {"model": "qst\x00ories", "max_tokens": 2, "messages": amsgs}),
                       ("/v1/responses", {"model": "qstories", "input": "x", "metadata": {"k\x00": "v"}}),
                       ("/v1/chat/completions", {"model": "qstories", "messages": amsgs, "stop": ["\x00"]}),
                       ("/v1/messages", {"model": "qstories", "max_tokens": 2, "messages": amsgs,
                                         "stop_sequences": ["a\x00"]})]:
        st, out, _ = srv.post(path, body, AUTH)
        assert st == 400 and "NUL" in out.decode(), (path, st, out)


# ---- Anthropic Messages ----

def test_messages_create_matches_chat(srv):
    c = ant(srv)
    msgs = [{"role": "user", "content": "Once upon a time"},
            {"role": "assistant", "content": "there was a cat."},
            {"role": "user", "content": [{"type": "text", "text": "What "},
                                         {"type": "text", "text": "next?"}]}]
    r = c.messages.create(model="stories", max_tokens=24, system="Tell a story.", messages=msgs,
                          **GREEDY)
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.model == "stories" and r.stop_reason == "max_tokens" and r.stop_sequence is None
    assert r.usage.output_tokens == 24
    text = "".join(b.text for b in r.content if b.type == "text")
    want, finish = chat_text(srv, "stories",
                             [{"role": "system", "content": "Tell a story."},
                              {"role": "user", "content": "Once upon a time"},
                              {"role": "assistant", "content": "there was a cat."},
                              {"role": "user", "content": "What next?"}], max_tokens=24)
    assert text == want and finish == "length"
    b = c.messages.create(model="stories", max_tokens=24, system="Tell a story.", messages=msgs,
                          extra_body={"temperature": 0.5, "top_k": 1, "top_p": 0.9})
    assert "".join(x.text for x in b.content if x.type == "text") == want  # top_k 1 is greedy
    n = c.messages.count_tokens(model="stories", system="Tell a story.", messages=msgs).input_tokens
    assert n == r.usage.input_tokens + r.usage.cache_read_input_tokens
    st, body, _ = srv.post("/tokenize", {"model": "stories", "messages": [
        {"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": "there was a cat."}, {"role": "user", "content": "What next?"}]},
        AUTH)
    assert st == 200 and json.loads(body)["count"] == n


def test_messages_stop_sequences_and_stream(srv):
    c = ant(srv)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    whole = c.messages.create(model="stories", max_tokens=60, messages=msgs, **GREEDY)
    text = whole.content[0].text
    # A stop sequence taken from the greedy output itself stops there.
    stop = text[10:13]
    assert len(stop.strip()) == 3
    r = c.messages.create(model="stories", max_tokens=60, messages=msgs, stop_sequences=[stop],
                          **GREEDY)
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert r.content[0].text == text[:text.index(stop)]
    # Streamed: the same text; the SDK's accumulated message agrees.
    with c.messages.stream(model="stories", max_tokens=60, messages=msgs, **GREEDY) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == text and final.content[0].text == text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 60
    # Raw event order.
    st, body, _ = srv.post("/v1/messages", {"model": "stories", "max_tokens": 3, "stream": True,
                                            "messages": msgs}, {"x-api-key": "sk-test"})
    assert st == 200
    events = [l[7:] for l in body.decode().splitlines() if l.startswith("event: ")]
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}


def test_messages_errors_and_auth(srv):
    c = ant(srv)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="nope", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    assert "stories" in e.value.body["error"]["message"]
    bad = [dict(max_tokens=4, messages=[{"role": "user", "content": [
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]),
           dict(max_tokens=4, messages=[{"role": "system", "content": "x"}]),
           dict(max_tokens=4, messages=[]),
           dict(max_tokens=0, messages=[{"role": "user", "content": "x"}]),
           dict(max_tokens=4, extra_body={"temperature": 5}, messages=[{"role": "user", "content": "x"}]),
           dict(max_tokens=4, messages=[{"role": "user", "content": "x"}], stop_sequences=[""]),
           dict(max_tokens=4, messages=[{"role": "user", "content": "x"}],
                tool_choice={"type": "tool"})]
    for kw in bad:
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model="stories", **kw)
        assert e.value.body["error"]["type"] == "invalid_request_error", kw
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="stories", **bad[0])
    assert "image" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        ant(srv, key="wrong").messages.create(model="stories", max_tokens=2,
                                              messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    # x-api-key works on every endpoint, and the Anthropic headers are accepted.
    st, _ = srv.get("/v1/models", {"x-api-key": "sk-test", "anthropic-version": "2023-06-01",
                                   "anthropic-beta": "tools-2024-04-04"})
    assert st == 200
    st, _ = srv.get("/v1/models", {"x-api-key": "nope"})
    assert st == 401
    st, body, _ = srv.post("/v1/chat/completions", {"model": "stories", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "x"}]},
                           {"x-api-key": "sk-test"})
    assert st == 200


def test_messages_tool_result_round_trip(srv):
    if not srv.has_tools_model:
        pytest.skip("Qwen2.5 template not found in ../shared")
    c = ant(srv)
    tools = [{"name": "get_weather", "description": "Weather of a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}]}]
    r = c.messages.create(model="qstories", max_tokens=16, tools=tools, messages=msgs,
                          tool_choice={"type": "auto"}, **GREEDY)
    assert r.stop_reason in ("max_tokens", "end_turn", "tool_use")
    text = "".join(b.text for b in r.content if b.type == "text")
    chat_tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                    "parameters": tools[0]["input_schema"]}}]
    want, _ = chat_text(srv, "qstories", [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C, sunny"}],
        max_tokens=16, tools=chat_tools)
    assert text == want
    # The prompt holds the tool definition, the call and its result as the template renders them.
    st, body, _ = srv.post("/v1/messages/count_tokens", {"model": "qstories", "tools": tools,
                                                         "messages": msgs}, AUTH)
    assert st == 200 and json.loads(body)["input_tokens"] == r.usage.input_tokens + r.usage.cache_read_input_tokens
    # is_error and text-block results are accepted; images in results are not.
    msgs[2]["content"][0].update(is_error=True, content=[{"type": "text", "text": "timeout"}])
    c.messages.create(model="qstories", max_tokens=2, tools=tools, messages=msgs)
    msgs[2]["content"][0]["content"] = [{"type": "image", "source": {}}]
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model="qstories", max_tokens=2, tools=tools, messages=msgs)


# ---- OpenAI Responses ----

def test_responses_plain_and_streamed(srv):
    c = oai(srv)
    r = c.responses.create(model="stories", instructions="Tell a story.", input="Once upon a time",
                           max_output_tokens=20, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens" and r.usage.output_tokens == 20
    assert [(it.type, it.status) for it in r.output] == [("message", "incomplete")]
    want, _ = chat_text(srv, "stories", [{"role": "system", "content": "Tell a story."},
                                         {"role": "user", "content": "Once upon a time"}], max_tokens=20)
    assert r.output_text == want
    deltas, types = [], []
    for ev in c.responses.create(model="stories", instructions="Tell a story.", input="Once upon a time",
                                 max_output_tokens=20, temperature=0, stream=True):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
        if ev.type in ("response.completed", "response.incomplete"):
            final = ev.response
    assert "".join(deltas) == want and final.output_text == want
    assert final.status == "incomplete" and final.output[-1].status == "incomplete"
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    # The SDK's stream helper accumulates the same response (ending with response.incomplete,
    # as OpenAI's API does when max_output_tokens cuts it; get_final_response() waits for
    # response.completed only).
    with c.responses.stream(model="stories", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Once upon a time"}]}], max_output_tokens=8, temperature=0) as s:
        last = list(s)[-1]
    assert last.type == "response.incomplete" and last.response.output_text == chat_text(
        srv, "stories", [{"role": "user", "content": "Once upon a time"}], max_tokens=8)[0]


def test_responses_chaining_store_retrieve_delete(srv):
    c = oai(srv)
    r1 = c.responses.create(model="stories", input="Once upon a time", max_output_tokens=8, temperature=0)
    r2 = c.responses.create(model="stories", input="And then?", previous_response_id=r1.id,
                            max_output_tokens=8, temperature=0)
    want, _ = chat_text(srv, "stories", [{"role": "user", "content": "Once upon a time"},
                                         {"role": "assistant", "content": r1.output_text},
                                         {"role": "user", "content": "And then?"}], max_tokens=8)
    assert r2.output_text == want and r2.previous_response_id == r1.id
    got = c.responses.retrieve(r1.id)
    assert got.id == r1.id and got.output_text == r1.output_text
    c.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r1.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="stories", input="x", previous_response_id=r1.id, max_output_tokens=2)
    r3 = c.responses.create(model="stories", input="x", store=False, max_output_tokens=2)
    assert r3.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r3.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="stories", input="y", previous_response_id=r3.id, max_output_tokens=2)


def test_responses_function_tools_round_trip(srv):
    if not srv.has_tools_model:
        pytest.skip("Qwen2.5 template not found in ../shared")
    c = oai(srv)
    tools = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    items = [{"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather",
              "arguments": "{\"city\":\"Paris\"}"},
             {"type": "function_call_output", "call_id": "call_1", "output": "18 C, sunny"}]
    r = c.responses.create(model="qstories", input=items, tools=tools, tool_choice="auto",
                           max_output_tokens=12, temperature=0, parallel_tool_calls=False)
    want, _ = chat_text(srv, "qstories", [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}],
        max_tokens=12, tools=[{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city", "parameters": tools[0]["parameters"]}}])
    assert r.output_text == want
    assert r.tools[0].name == "get_weather" and r.parallel_tool_calls is False
    for kw in (dict(tools=[{"type": "web_search"}]), dict(input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://x/y.png"}]}]), dict(background=True)):
        args = dict(model="qstories", input="x", max_output_tokens=2)
        args.update(kw)
        with pytest.raises(openai.BadRequestError):
            c.responses.create(**args)


def test_langchain_responses_api(srv):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(model="stories", base_url=srv.base + "/v1", api_key="sk-test", temperature=0,
                     max_tokens=12, use_responses_api=True, max_retries=0)
    msg = llm.invoke("Once upon a time")
    want, _ = chat_text(srv, "stories", [{"role": "user", "content": "Once upon a time"}], max_tokens=12)
    assert msg.text == want
    streamed = "".join(ch.text for ch in llm.stream("Once upon a time"))
    assert streamed == want


# ---- chat/completions fields ----

def test_chat_extra_fields(srv):
    c = oai(srv)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    want, _ = chat_text(srv, "stories", msgs, max_tokens=6)
    got, _ = chat_text(srv, "stories", msgs, max_tokens=6, store=True, metadata={"k": "v"},
                       service_tier="auto", user="u1", parallel_tool_calls=False,
                       reasoning_effort="low", extra_body={"frobnicate": 1})
    assert got == want
    chat_text(srv, "stories", msgs, max_tokens=1, extra_body={"frobnicate": 2})
    # Unknown fields are ignored and logged once per name.
    assert srv.read_log().count("ignoring unknown request field 'frobnicate'") == 1
    chunks = list(c.chat.completions.create(
        model="stories", messages=msgs, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    with_usage = [ch for ch in chunks if ch.choices]
    assert all(ch.usage is not None for ch in with_usage)
    assert [ch.usage.completion_tokens for ch in with_usage][-1] == 6
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    for kw in (dict(extra_body={"prediction": {"type": "content", "content": "x"}}),
               dict(extra_body={"guided_whitespace_pattern": " "}), dict(store="yes")):
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="stories", messages=msgs, max_tokens=2, **kw)


# ---- fuzzing ----

def test_dialect_fuzz(srv):
    """Hand-made bad bodies (400 or 413, never 5xx) and seeded random mutations of valid ones
    (an answer or a close) on /v1/messages, /v1/messages/count_tokens and /v1/responses."""
    hdr = {"x-api-key": "sk-test"}
    user = {"role": "user", "content": "hi"}
    cases = [
        ("/v1/messages", {"model": 3, "max_tokens": 2, "messages": [user]}),
        ("/v1/messages", {"model": "stories", "max_tokens": "2", "messages": [user]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": user}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [{"role": "user", "content": 5}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [{"role": "user", "content": [5]}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [{"role": "user", "content": [{}]}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": 1, "name": "f", "input": []}]}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "tool_result"}]}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "system": [{"type": "image"}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "tools": [{"name": "f"}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "tools": {}}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "thinking": {"type": "on"}}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "metadata": "x"}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "stream": "yes"}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "top_k": 1.5}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [user], "unknown": 1}),
        ("/v1/messages", {"model": "stories", "max_tokens": 2, "messages": [{"role": "user", "content": "a" * 100000}]}),
        ("/v1/messages", {"model": "stories", "max_tokens": 10 ** 12, "messages": [user]}),
        ("/v1/messages/count_tokens", {"model": "stories", "messages": [user], "max_tokens": 2}),
        ("/v1/messages/count_tokens", {"model": "stories"}),
        ("/v1/responses", {"model": "stories", "input": 5}),
        ("/v1/responses", {"model": "stories"}),
        ("/v1/responses", {"model": "stories", "input": [5]}),
        ("/v1/responses", {"model": "stories", "input": [{"type": "function_call"}]}),
        ("/v1/responses", {"model": "stories", "input": [{"type": "function_call_output", "call_id": "c"}]}),
        ("/v1/responses", {"model": "stories", "input": [{"role": "tool", "content": "x"}]}),
        ("/v1/responses", {"model": "stories", "input": [{"type": "item_reference", "id": "x"}]}),
        ("/v1/responses", {"model": "stories", "input": "x", "tools": [{"type": "function"}]}),
        ("/v1/responses", {"model": "stories", "input": "x", "tool_choice": "maybe"}),
        ("/v1/responses", {"model": "stories", "input": "x", "text": {"format": 1}}),
        ("/v1/responses", {"model": "stories", "input": "x", "max_output_tokens": -1}),
        ("/v1/responses", {"model": "stories", "input": "x", "previous_response_id": 7}),
        ("/v1/responses", {"model": "stories", "input": "x", "reasoning": {"effort": 3}}),
        ("/v1/responses", {"model": "stories", "input": "x", "truncation": "sometimes"}),
        ("/v1/responses", {"model": "stories", "input": "x", "frobnicate": True}),
        ("/v1/responses", {"model": "stories", "input": "a" * 100000}),
    ]
    for path, body in cases:
        st, out, _ = srv.post(path, body, hdr)
        assert st in (400, 413), (path, body if len(json.dumps(body)) < 300 else "huge", st, out[:300])
        err = json.loads(out)
        if path.startswith("/v1/messages"):
            assert err["type"] == "error" and err["error"]["type"] in ("invalid_request_error",
                                                                      "request_too_large")
        else:
            assert "message" in err["error"]
    # Invalid UTF-8, NUL bytes, truncated and non-object bodies, raw.
    raws = [b'{"model":"stories","max_tokens":2,"messages":[{"role":"user","content":"\xff\xfe"}]}',
            b'{"model":"stories","max_tokens":2,"messages":[{"role":"user","content":"a\x00b"}]}',
            b'{"model":"stories","max_tokens":2,"messages":[{"role":"user","content":"a\\u0000b"}]}',
            b'{"model":"stories","input":"\xc3"}', b'{"model":"stories","input":"x"', b'[]', b'',
            b'{"model":"stories","input":[{"role":"user","content":[{"type":"input_text","text":"\xed\xa0\x80"}]}]}']
    for body in raws:
        for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses"):
            req = (b"POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: sk-test\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))) + body
            out = raw(srv.port, req, timeout=30)
            st = status_of(out)
            assert st is not None and (st == 200 or 400 <= st < 500), (path, body, out[:300])
    # The same strict body rules as chat completions (issue 13): a raw NUL byte, a NUL in a key,
    # invalid UTF-8, data after the value and duplicate keys are a 400 in the dialect's error
    # shape, never truncated or repaired silently (a \\u0000 in text is carried: see above).
    strict = [b'{"model":"stories","max_tokens":2,"k\\u0000":1,"input":"x","messages":[{"role":"user","content":"x"}]}',
              b'{"model":"stories","max_tokens":2,"input":"a\\u0000b","messages":[{"role":"user","content":"a\x00"}]}',
              b'{"model":"stories","max_tokens":2,"input":"\xff","messages":[{"role":"user","content":"\xff"}]}',
              b'{"model":"stories","max_tokens":2,"input":"x","messages":[{"role":"user","content":"x"}]} {}',
              b'{"model":"stories","max_tokens":2,"max_tokens":3,"input":"x","messages":[{"role":"user","content":"x"}]}']
    for body in strict:
        for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses"):
            req = (b"POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: sk-test\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))) + body
            out = raw(srv.port, req, timeout=30)
            assert status_of(out) == 400, (path, body, out[:300])
            err = json.loads(out.split(b"\r\n\r\n", 1)[1])
            if path.startswith("/v1/messages"):
                assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
            else:
                assert err["error"]["type"] == "invalid_request_error", err
    rng = random.Random(20261202)
    valid = [("/v1/messages", {"model": "stories", "max_tokens": 2, "system": [{"type": "text", "text": "s"}],
                               "messages": [user, {"role": "assistant", "content": [
                                   {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
                                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                                 "content": "r", "is_error": True}]}],
                               "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                               "tool_choice": {"type": "any"}, "stop_sequences": ["x"], "stream": True}),
             ("/v1/messages/count_tokens", {"model": "tiny", "messages": [user], "system": "s"}),
             ("/v1/responses", {"model": "tiny", "input": [user, {"type": "function_call", "call_id": "c",
                                                                  "name": "f", "arguments": "{}"},
                                                           {"type": "function_call_output", "call_id": "c",
                                                            "output": "o"}],
                                "instructions": "i", "max_output_tokens": 2, "stream": True,
                                "tools": [{"type": "function", "name": "f"}], "store": False})]
    for i in range(150):
        path, body = rng.choice(valid)
        data = bytearray(json.dumps(body).encode())
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos]
            elif op < 0.85:
                data[pos:pos] = b"\\u0000"  # a NUL escape in text, a key or a name
            else:
                data.insert(pos, rng.choice(b'{}[]",:0-9\\\x00\xff'))
        req = (b"POST %s HTTP/1.1\r\nHost: x\r\nx-api-key: sk-test\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n" % (path.encode(), len(data))) + bytes(data)
        out = raw(srv.port, req, timeout=30)
        st = status_of(out)
        assert st is not None and st < 500, (i, bytes(data)[:300], out[:300])
    assert srv.health()[0] == 200
    srv.wait_idle()


def test_dialects_reasoning(quiver_bin):
    """--reasoning-parser deepseek_r1 on quiver-tiny (its output never closes </think>, so all of
    it is reasoning): thinking blocks and thinking_delta events from /v1/messages, a reasoning
    output item from /v1/responses, both equal to chat's reasoning_content."""
    s = Server(quiver_bin, ["--reasoning-parser", "deepseek_r1"])
    try:
        msgs = [{"role": "user", "content": "Hi"}]
        r = oai(s).chat.completions.create(model="quiver-tiny", messages=msgs, max_tokens=8, temperature=0)
        want = r.choices[0].message.model_extra["reasoning_content"]
        assert want
        m = ant(s).messages.create(model="quiver-tiny", max_tokens=8, messages=msgs,
                                   thinking={"type": "adaptive"}, **GREEDY)
        assert [b.type for b in m.content] == ["thinking"] and m.content[0].thinking == want
        # budget_tokens is validated as Anthropic does (>= 1024, below max_tokens), not enforced:
        # max_tokens ends this reasoning, inside the thinking block.
        assert m.stop_reason == "max_tokens"
        for budget, mt in ((1024, 8), (1000, 2048)):
            with pytest.raises(anthropic.BadRequestError) as e:
                ant(s).messages.create(model="quiver-tiny", max_tokens=mt, messages=msgs,
                                       thinking={"type": "enabled", "budget_tokens": budget})
            assert e.value.body["error"]["type"] == "invalid_request_error"
            assert "budget_tokens" in e.value.body["error"]["message"]
        with ant(s).messages.stream(model="quiver-tiny", max_tokens=8, messages=msgs, **GREEDY) as st:
            deltas = [e.delta.thinking for e in st if e.type == "content_block_delta"]
        assert "".join(deltas) == want
        resp = oai(s).responses.create(model="quiver-tiny", input="Hi", max_output_tokens=8,
                                       temperature=0, reasoning={"effort": "low"})
        assert resp.output[0].type == "reasoning" and resp.output[0].content[0].text == want
        assert resp.output_text == ""
        text = "".join(e.delta for e in oai(s).responses.create(
            model="quiver-tiny", input="Hi", max_output_tokens=8, temperature=0, stream=True)
            if e.type == "response.reasoning_text.delta")
        assert text == want
    finally:
        s.stop()


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def forced_calls_available(s):
    """Forced tool calls need constrained decoding in the build: a chat request with
    tool_choice required must then come back with a call."""
    r = oai(s).chat.completions.create(
        model="qstories", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=400,
        temperature=0, tool_choice="required",
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}])
    return bool(r.choices[0].message.tool_calls)


def test_forced_tool_use_streamed(srv):
    """tool_choice any/tool (Anthropic) and required (Responses) reach the shared request's
    tool_choice, which constrained decoding enforces: the anthropic SDK's stream gets a tool_use
    block through input_json_delta, and the Responses API a function_call item whose result
    goes back through previous_response_id."""
    if not srv.has_tools_model:
        pytest.skip("Qwen2.5 template not found in ../shared")
    if not forced_calls_available(srv):
        pytest.skip("this build does not enforce tool_choice (no constrained decoding)")
    c = ant(srv)
    tools = [{"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        with c.messages.stream(model="qstories", max_tokens=400, tools=tools, tool_choice=choice,
                               messages=msgs, **GREEDY) as s:
            events = list(s)
            final = s.get_final_message()
        assert final.stop_reason == "tool_use"
        use = [b for b in final.content if b.type == "tool_use"]
        assert len(use) == 1 and use[0].name == "get_weather" and isinstance(use[0].input, dict)
        partial = "".join(e.delta.partial_json for e in events
                          if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
        assert json.loads(partial) == use[0].input
        whole = c.messages.create(model="qstories", max_tokens=400, tools=tools, tool_choice=choice,
                                  messages=msgs, **GREEDY)
        assert [b.input for b in whole.content if b.type == "tool_use"] == [use[0].input]
    # The round trip: the call's result goes back as a tool_result.
    r = c.messages.create(model="qstories", max_tokens=8, tools=tools, messages=msgs + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use[0].id, "name": "get_weather",
                                           "input": use[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id, "content": "18 C"}]}],
        **GREEDY)
    assert r.usage.output_tokens > 0
    o = oai(srv)
    rtools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    r1 = o.responses.create(model="qstories", input="Weather in Paris?", tools=rtools,
                            tool_choice="required", max_output_tokens=400, temperature=0)
    calls = [it for it in r1.output if it.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments)
    args = ""
    for ev in o.responses.create(model="qstories", input="Weather in Paris?", tools=rtools,
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=400, temperature=0, stream=True):
        if ev.type == "response.function_call_arguments.delta":
            args += ev.delta
    assert json.loads(args) == json.loads(calls[0].arguments)
    r2 = o.responses.create(model="qstories", previous_response_id=r1.id, tools=rtools,
                            input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                    "output": "18 C"}], max_output_tokens=8, temperature=0)
    assert r2.status in ("completed", "incomplete") and r2.previous_response_id == r1.id
