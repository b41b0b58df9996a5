"""`quiver serve` end to end: a live server on 127.0.0.1 driven by the official openai SDK and
by raw sockets. Models: stories260K (a real tiny Llama with an exact greedy reference) and the
embedded quiver-tiny. Every server is stopped with SIGTERM at the end and must exit 0 (under
ASan that also means no leaks). Every loop and socket read is bounded."""
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

START_TIMEOUT = 120


class Server:
    """A `quiver serve` process on a free loopback port; its log goes to a file (a pipe nobody
    reads could fill up and stall the server)."""

    def __init__(self, bin_, args, env=None):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="quiver-serve-", suffix=".log", delete=False)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([bin_, "serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=e)
        deadline = time.time() + START_TIMEOUT
        self.port = None
        while time.time() < deadline and self.proc.poll() is None:
            m = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", self.read_log())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if self.port is None:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError("server did not start:\n" + self.read_log())
        self.base = f"http://127.0.0.1:{self.port}"

    def read_log(self):
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def post(self, path, obj, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request("POST", path, body=json.dumps(obj), headers=h)
        r = c.getresponse()
        body = r.read()
        hdrs = dict(r.getheaders())
        c.close()
        return r.status, body, hdrs

    def health(self):
        st, body = self.get("/health")
        return st, json.loads(body)

    def wait_idle(self, timeout=30):
        """Until every model has no running or waiting request and no KV block in use."""
        deadline = time.time() + timeout
        h = None
        while time.time() < deadline:
            st, h = self.health()
            if st == 200 and all(m["running"] == 0 and m["waiting"] == 0 and m["kv_blocks_used"] == 0
                                 for m in h["models"]):
                return h
            time.sleep(0.05)
        raise AssertionError(f"server not idle: {h}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        rc = self.proc.returncode
        log = self.read_log()
        os.unlink(self.log.name)
        assert rc == 0, f"server exited {rc}:\n{log[-4000:]}"
        return log


@pytest.fixture(scope="module")
def reference(stories_dir):
    return (stories_dir / "greedy-256.txt").read_text()


@pytest.fixture(scope="module")
def srv(quiver_bin, stories_dir):
    cfg = {
        "models": [{"name": "stories", "path": str(stories_dir)},
                   {"name": "tiny", "path": "quiver-tiny", "max_model_len": 256}],
        "aliases": {"s": "stories"},
        "routes": {"auto": ["stories", "tiny"]},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    s = Server(quiver_bin, ["--config", f.name, "--alias", "t=tiny"])
    yield s
    s.stop()
    os.unlink(f.name)


# ---- openai SDK ----

def test_models_listed(srv):
    ids = {m.id for m in srv.client().models.list().data}
    assert {"stories", "tiny", "s", "t", "auto"} <= ids
    assert srv.client().models.retrieve("s").id == "s"
    st, h = srv.health()
    assert st == 200 and h["status"] == "ok"
    assert [m["name"] for m in h["models"]] == ["stories", "tiny"]


def test_greedy_completion_matches_reference(srv, reference):
    r = srv.client().completions.create(model="stories", prompt=[1], max_tokens=256, temperature=0)
    assert r.choices[0].text == reference
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 1 and r.usage.completion_tokens == 256
    assert r.model == "stories" and r.object == "text_completion"


def test_greedy_completion_equals_quiver_generate(srv, quiver_bin, stories_dir):
    prompt = "Once upon a time"
    g = subprocess.run([quiver_bin, "generate", "--model", str(stories_dir), "--prompt", prompt,
                        "--max-tokens", "48", "--temperature", "0"], capture_output=True, text=True,
                       timeout=300)
    assert g.returncode == 0, g.stderr
    r = srv.client().completions.create(model="stories", prompt=prompt, max_tokens=48, temperature=0)
    # generate ends its output with one newline of its own.
    assert g.stdout == r.choices[0].text + "\n"


def test_streamed_completion_equals_unstreamed(srv, reference):
    c = srv.client()
    chunks = list(c.completions.create(model="s", prompt=[1], max_tokens=64, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    whole = c.completions.create(model="s", prompt=[1], max_tokens=64, temperature=0).choices[0].text
    assert text == whole and reference.startswith(text)
    assert chunks[-1].usage.completion_tokens == 64 and chunks[-1].choices == []
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == ["length"]


def test_chat_completion_and_stream(srv):
    c = srv.client()
    msgs = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Once upon a time"}]
    r = c.chat.completions.create(model="stories", messages=msgs, max_tokens=20, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.completion_tokens == 20
    stream = c.chat.completions.create(model="stories", messages=msgs, max_tokens=20, temperature=0,
                                       stream=True)
    parts = []
    roles = 0
    for ch in stream:
        d = ch.choices[0].delta
        roles += d.role == "assistant"
        parts.append(d.content or "")
    assert roles == 1
    assert "".join(parts) == r.choices[0].message.content


def test_n_seed_stop_and_logprobs(srv):
    c = srv.client()
    kw = dict(model="stories", prompt="Once upon a time", max_tokens=24, temperature=1.0, n=3, seed=1234)
    a = c.completions.create(**kw)
    b = c.completions.create(**kw)
    assert [x.index for x in a.choices] == [0, 1, 2]
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert 3 <= a.usage.completion_tokens <= 72
    r = c.completions.create(model="stories", prompt="Once upon a time", max_tokens=60, temperature=0,
                             stop=["."])
    assert "." not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    r = c.completions.create(model="stories", prompt="Once upon a time", max_tokens=5, temperature=0,
                             logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5 and len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs)
    r = c.chat.completions.create(model="stories", messages=[{"role": "user", "content": "Hi"}],
                                  max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)
    # The engine's text may also carry text of the prompt's last token that its detokenizer held
    # back (a newline here); the tokens' texts must still be the end of the content.
    assert r.choices[0].message.content.endswith("".join(t.token for t in content))


def test_errors(srv):
    c = srv.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="x")
    assert "stories" in str(e.value) and "tiny" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="stories", prompt="x", temperature=7)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="stories", messages=[{"role": "user", "content": "x"}],
                                  response_format={"type": "xml"})
    assert "response_format" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="stories", prompt="Once upon a time " * 200, max_tokens=4)
    assert "maximum context length" in str(e.value)
    st, body, _ = srv.post("/v1/completions", {"model": "stories", "prompt": [1], "max_tokens": 2,
                                               "logit_bias": {"99999": 5}})
    assert st == 400


def test_tokenize_detokenize(srv):
    st, body, _ = srv.post("/tokenize", {"model": "stories", "prompt": "Once upon"})
    assert st == 200
    toks = json.loads(body)["tokens"]
    assert toks[0] == 1 and len(toks) == json.loads(body)["count"]
    st, body, _ = srv.post("/detokenize", {"model": "stories", "tokens": toks[1:]})
    assert st == 200 and json.loads(body)["prompt"] == "Once upon"


def test_two_models_isolated_and_metrics(srv):
    st, body, h = srv.post("/v1/completions", {"model": "t", "prompt": "abc", "max_tokens": 4})
    assert st == 200 and h["X-Quiver-Model"] == "tiny"
    assert json.loads(body)["model"] == "t"
    st, body, h = srv.post("/v1/completions", {"model": "auto", "prompt": "abc", "max_tokens": 4})
    assert st == 200 and h["X-Quiver-Model"] == "stories"
    st, body = srv.get("/metrics")
    text = body.decode()
    assert st == 200
    assert re.search(r'quiver_requests_total\{model="tiny",status="200"\} \d+', text)
    assert 'quiver_time_to_first_token_seconds_bucket{model="stories",le="+Inf"}' in text
    assert "quiver_kv_blocks_used" in text and "quiver_prefix_cache_hit_rate" in text


# ---- raw sockets ----

def raw(port, data, read=True, timeout=20, half_close=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        if read:
            while True:
                try:
                    b = s.recv(65536)
                except socket.timeout:
                    break
                if not b:
                    break
                out += b
        return out
    finally:
        s.close()


def status_of(resp):
    m = re.match(rb"HTTP/1\.1 (\d{3})", resp)
    return int(m.group(1)) if m else None


def test_raw_malformed_and_limits(srv):
    cases = [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo-Colon-Header\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n", 400),
        # Well-formed HTTP answered with an error keeps the connection unless asked to close.
        (b"POST /v1/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\n{x}", 400),
        (b"DELETE /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n", 405),
        (b"GET /v2/nothing HTTP/1.1\r\nConnection: close\r\n\r\n", 404),
    ]
    for data, want in cases:
        assert status_of(raw(srv.port, data)) == want, data[:60]
    assert srv.health()[0] == 200


def test_raw_chunked_pipelined_slow(srv):
    body = json.dumps({"model": "stories", "prompt": [1], "max_tokens": 8, "temperature": 0}).encode()
    half = len(body) // 2
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % half + body[:half] + b"\r\n"
               + b"%x\r\n" % (len(body) - half) + body[half:] + b"\r\n0\r\n\r\n")
    closing = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(srv.port, chunked + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" + closing)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", out)
    assert statuses == [b"200", b"200", b"200"], out[:300]
    assert out.index(b"text_completion") < out.index(b'"object":"list"')
    # A request dribbled a few bytes at a time still works.
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for i in range(0, len(req), 7):
        s.sendall(req[i:i + 7])
        time.sleep(0.02)
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    assert status_of(got) == 200


def test_disconnect_mid_stream_frees_blocks(srv):
    body = json.dumps({"model": "stories", "prompt": [1], "max_tokens": 400, "stream": True,
                       "temperature": 0, "n": 2}).encode()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while b"data: " not in got:
            b = s.recv(4096)
            assert b
            got += b
        s.close()
    h = srv.wait_idle()
    assert all(m["kv_blocks_used"] == 0 for m in h["models"])


def test_load_200_concurrent_streams(srv):
    want = srv.client().completions.create(model="stories", prompt="Once upon a time", max_tokens=24,
                                           temperature=0).choices[0].text
    body = json.dumps({"model": "stories", "prompt": "Once upon a time", "max_tokens": 24,
                       "temperature": 0, "stream": True}).encode()

    def one(_):
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=300)
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read().decode()
        c.close()
        text = ""
        for line in data.split("\n"):
            if line.startswith("data: {"):
                ch = json.loads(line[6:])
                if ch["choices"]:
                    text += ch["choices"][0]["text"]
        return r.status, text, data.rstrip().endswith("data: [DONE]")

    with ThreadPoolExecutor(max_workers=200) as ex:
        results = list(ex.map(one, range(200)))
    assert all(st == 200 for st, _, _ in results)
    assert all(done for _, _, done in results)
    assert sum(t == want for _, t, _ in results) == 200
    srv.wait_idle()


# ---- separate servers: auth, route fallback, drain ----

def test_auth(quiver_bin):
    s = Server(quiver_bin, ["--api-key", "sk-one"], env={"QUIVER_API_KEY": "sk-two"})
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert s.client("sk-one").models.list().data[0].id == "quiver-tiny"
        assert s.client("sk-two").completions.create(model="quiver-tiny", prompt="ab", max_tokens=3).choices
        assert s.get("/health")[0] == 200
        assert s.get("/metrics")[0] == 401
        assert s.get("/metrics", {"Authorization": "Bearer sk-one"})[0] == 200
    finally:
        s.stop()


def test_route_falls_back_when_queue_full(quiver_bin, stories_dir):
    cfg = {"models": [{"name": "stories", "path": str(stories_dir), "max_num_seqs": 1, "max_waiting": 1},
                      {"name": "tiny", "path": "quiver-tiny"}],
           "routes": {"auto": ["stories", "tiny"]}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    s = Server(quiver_bin, ["--config", f.name])
    try:
        body = {"model": "auto", "prompt": [1], "max_tokens": 400, "temperature": 0, "stream": True}
        barrier = threading.Barrier(8)

        def one(_):
            barrier.wait(30)
            return s.post("/v1/completions", body)

        with ThreadPoolExecutor(max_workers=8) as ex:
            results = list(ex.map(one, range(8)))
        assert all(st == 200 for st, _, _ in results)
        served = [h["X-Quiver-Model"] for _, _, h in results]
        assert "stories" in served and "tiny" in served, served
        # Without a route, a full queue is a 429.
        body["model"] = "stories"
        with ThreadPoolExecutor(max_workers=8) as ex:
            results = list(ex.map(one, range(8)))
        codes = sorted(st for st, _, _ in results)
        assert 200 in codes and 429 in codes, codes
        s.wait_idle()
    finally:
        s.stop()
        os.unlink(f.name)


def test_sigterm_drains_in_flight(quiver_bin, stories_dir):
    s = Server(quiver_bin, ["--model", f"stories={stories_dir}"])
    body = json.dumps({"model": "stories", "prompt": [1], "max_tokens": 300, "temperature": 0,
                       "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=60)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while b"data: " not in got:
        b = sock.recv(4096)
        assert b
        got += b
    s.proc.send_signal(signal.SIGTERM)
    while True:
        b = sock.recv(65536)
        if not b:
            break
        got += b
    sock.close()
    assert b"data: [DONE]" in got
    s.proc.wait(60)  # exits by itself once drained
    log = s.stop()
    assert "drained" in log


def test_cli_errors(quiver_bin, tmp_path):
    def run(*args):
        return subprocess.run([quiver_bin, "serve", *args], capture_output=True, text=True, timeout=120)

    r = run("--help")
    assert r.returncode == 0 and "--model" in r.stdout and "--api-key" in r.stdout
    r = run("--frobnicate", "1")
    assert r.returncode == 2 and "unknown option" in r.stderr
    r = run("--port", "99999")
    assert r.returncode == 2 and "--port" in r.stderr
    r = run("--model", str(tmp_path / "nowhere"), "--port", "0")
    assert r.returncode == 1 and "nowhere" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": [{"name": "a", "path": "quiver-tiny"}], "routes": {"r": ["zz"]}}')
    r = run("--config", str(bad), "--port", "0")
    assert r.returncode == 2 and "zz" in r.stderr
    bad.write_text("{not json")
    r = run("--config", str(bad))
    assert r.returncode == 2 and "JSON" in r.stderr
    r = run("--reasoning-parser", "deepseek-r1")
    assert r.returncode == 2 and "unknown reasoning parser 'deepseek-r1'" in r.stderr
    bad.write_text('{"models": [{"name": "a", "path": "quiver-tiny", "reasoning_parser": "granite"}]}')
    r = run("--config", str(bad))
    assert r.returncode == 2 and "unknown reasoning parser 'granite'" in r.stderr


def test_reasoning_parser(quiver_bin):
    """--reasoning-parser deepseek_r1 on quiver-tiny: its output never closes </think>, so all
    of it is reasoning_content, streamed or not; completions are not parsed."""
    s = Server(quiver_bin, ["--reasoning-parser", "deepseek_r1"])
    try:
        c = s.client()
        msgs = [{"role": "user", "content": "Hi"}]
        r = c.chat.completions.create(model="quiver-tiny", messages=msgs, max_tokens=8, temperature=0)
        m = r.choices[0].message
        reasoning = m.model_extra["reasoning_content"]
        assert "</think>" not in reasoning and reasoning and m.content == ""
        got, content = "", ""
        for ch in c.chat.completions.create(model="quiver-tiny", messages=msgs, max_tokens=8,
                                            temperature=0, stream=True):
            if ch.choices:
                got += (ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                content += ch.choices[0].delta.content or ""
        assert got == reasoning and content == ""
        t = c.completions.create(model="quiver-tiny", prompt="Hi", max_tokens=4, temperature=0)
        assert "reasoning_content" not in (t.choices[0].model_extra or {})
    finally:
        s.stop()


def test_model_chat_template(quiver_bin, stories_dir, shared_dir, tmp_path):
    """A model directory that ships a template: stories260K's weights and tokenizer with Gemma 2's
    template (which raises on a system message)."""
    tmpl = shared_dir / "data" / "chat-templates" / "google-gemma-2-2b-it.jinja"
    if not tmpl.exists():
        pytest.skip(f"{tmpl} not found")
    d = tmp_path / "gemma-stories"
    d.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"):
        (d / f).symlink_to(stories_dir / f)
    (d / "chat_template.jinja").write_text(tmpl.read_text())
    s = Server(quiver_bin, ["--model", f"g={d}"])
    try:
        c = s.client()
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="g", messages=[{"role": "system", "content": "x"},
                                                           {"role": "user", "content": "Hi"}])
        assert "System role not supported" in str(e.value)
        r = c.chat.completions.create(model="g", messages=[{"role": "user", "content": "Hi"}],
                                      max_tokens=5, temperature=0)
        assert r.choices[0].finish_reason == "length"
        st, body, _ = s.post("/tokenize", {"model": "g", "messages": [{"role": "user", "content": "Hi"}]})
        assert st == 200
        toks = json.loads(body)["tokens"]
        st, body, _ = s.post("/detokenize", {"model": "g", "tokens": toks})
        assert "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n" in json.loads(body)["prompt"]
    finally:
        s.stop()


def test_fuzzed_requests_never_crash(srv):
    """Seeded random mutations of valid requests (bytes of the request line, headers and JSON
    bodies): every one gets an HTTP answer or a close, and the server stays healthy."""
    import random
    rng = random.Random(20261126)
    bodies = [
        {"model": "stories", "prompt": "Once", "max_tokens": 2, "temperature": 0},
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 2,
         "stop": ["a"], "logprobs": True, "top_logprobs": 2, "stream": True},
        {"model": "s", "prompt": [1, 2, 3], "max_tokens": 2, "echo": True, "logprobs": None,
         "logit_bias": {"5": 1.5}, "seed": 7},
        {"model": "tiny", "prompt": "x", "max_tokens": 4, "guided_regex": "[a-c]{2,9}(x|yz)*",
         "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
             "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "integer"}}}}}},
    ]
    paths = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]
    for i in range(300):
        body = json.dumps(rng.choice(bodies)).encode()
        req = (b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % (rng.choice(paths).encode(), len(body))) + body
        req = bytearray(req)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(req))
            if op < 0.4:
                req[pos] = rng.randrange(256)
            elif op < 0.7:
                del req[pos]
            else:
                req.insert(pos, rng.choice(b'{}[]",:0-9eE\\\r\n \x00\xff'))
        # Most cases half-close at once (the server drops what is incomplete or unanswered); one
        # in five waits a moment for a full answer.
        full = i % 5 == 0
        try:
            out = raw(srv.port, bytes(req), timeout=1 if full else 10, half_close=not full)
        except ConnectionResetError:
            out = b""
        assert out == b"" or status_of(out) is not None, (i, bytes(req)[:200], out[:200])
    assert srv.health()[0] == 200
    srv.wait_idle()


def test_port_in_use(srv, quiver_bin):
    r = subprocess.run([quiver_bin, "serve", "--port", str(srv.port)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "cannot listen" in r.stderr
    assert srv.health()[0] == 200
