"""Operations (issue 19) end to end: vLLM/llama.cpp flag spellings on a live server and in
`quiver generate`, --version and GET /version, the vLLM-named metrics (checked with promtool
and for how they move under load), CORS and TLS (the openai SDK over a self-signed certificate,
plain HTTP to the TLS port, a stalled handshake, mutual TLS with good and bad client
certificates). Every server is stopped with SIGTERM and must exit 0 (under ASan: no leaks)."""
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import httpx
import openai
import pytest

from test_server import Server


def run(bin_, *args, timeout=120):
    return subprocess.run([bin_, *args], capture_output=True, text=True, timeout=timeout)


# ---- version ----

def test_version(quiver_bin):
    for args in (["--version"], ["version"], ["-V"]):
        r = run(quiver_bin, *args)
        assert r.returncode == 0, r.stderr
        assert re.match(r"quiver \d+\.\d+\.\d+ \(commit [0-9a-f]{7,}(-dirty)?|quiver \d+\.\d+\.\d+ \(commit unknown", r.stdout)
        assert "backends: cpu" in r.stdout
    j = json.loads(run(quiver_bin, "version", "--json").stdout)
    assert j["backends"].startswith("cpu")
    assert run(quiver_bin, "version", "--bogus").returncode == 2
    s = Server(quiver_bin, [])
    try:
        st, body = s.get("/version")
        v = json.loads(body)
        assert st == 200 and v["version"] == j["version"] and v["commit"] == j["commit"]
        assert "cpu" in v["backends"] and v["tls"] is False and "build_type" in v
    finally:
        s.stop()


# ---- flag spellings ----

def test_vllm_spelled_serve(quiver_bin, stories_dir):
    """vLLM's command line: positional model, --served-model-name, sizing flags, prefix caching
    off, dtype, seed, log level, no request log."""
    s = Server(quiver_bin, [str(stories_dir), "--served-model-name", "org/stories", "--served-model-name=st",
                            "--max-model-len=128", "--max-num-seqs", "4", "--max-num-batched-tokens", "64",
                            "--block-size", "16", "--no-enable-prefix-caching", "--dtype", "auto",
                            "--seed", "3", "--tensor-parallel-size", "1", "--disable-log-requests",
                            "--log-level", "info", "--enable-auto-tool-choice"])
    try:
        ids = [m.id for m in s.client().models.list().data]
        assert ids == ["org/stories", "st"]
        r = s.client().completions.create(model="st", prompt="Once upon a time", max_tokens=8, temperature=0)
        assert r.usage.completion_tokens == 8
        # max_model_len 128: a prompt + max_tokens beyond it is refused.
        with pytest.raises(openai.BadRequestError):
            s.client().completions.create(model="org/stories", prompt="x", max_tokens=500)
        # Two identical prompts: prefix caching is off, so nothing is served from the cache.
        p = "Once upon a time there was a little girl named Lily who loved to play outside " * 2
        for _ in range(2):
            s.client().completions.create(model="st", prompt=p, max_tokens=2, temperature=0)
        _, body = s.get("/metrics")
        assert re.search(r'vllm:prefix_cache_hits_total\{model_name="org/stories"\} 0\b', body.decode())
    finally:
        log = s.stop()
    assert "access 127.0.0.1" not in log  # --disable-log-requests


def test_seed_makes_unseeded_sampling_reproducible(quiver_bin):
    outs = []
    for _ in range(2):
        s = Server(quiver_bin, ["-m", "quiver-tiny", "--seed", "1234"])
        try:
            r = s.client().completions.create(model="quiver-tiny", prompt="abc", max_tokens=12, temperature=1.0)
            outs.append(r.choices[0].text)
        finally:
            s.stop()
    assert outs[0] == outs[1]


def test_log_level(quiver_bin):
    s = Server(quiver_bin, ["--log-level", "error"])
    try:
        s.client().completions.create(model="quiver-tiny", prompt="a", max_tokens=1)
    finally:
        log = s.stop()
    assert " quiver info: " not in log and "access 127.0.0.1" not in log
    assert "listening on http://" in log  # the startup line is not a log message


def test_chat_template_override(quiver_bin, tmp_path):
    """--chat-template as text and as a file replaces the model's format: the prompt is exactly
    the render (quiver-tiny's byte tokenizer counts it)."""
    tpl = "{% for m in messages %}[{{ m.content }}]{% endfor %}"
    f = tmp_path / "t.jinja"
    f.write_text(tpl)
    for arg in (tpl, str(f)):
        s = Server(quiver_bin, ["--chat-template", arg])
        try:
            c = s.client()
            chat = c.chat.completions.create(model="quiver-tiny", messages=[{"role": "user", "content": "hello"}],
                                             max_tokens=1)
            comp = c.completions.create(model="quiver-tiny", prompt="[hello]", max_tokens=1)
            # The render exactly (a template brings its own special tokens: no BOS is added, as
            # the completion of the same text gets one).
            assert chat.usage.prompt_tokens == len("[hello]") == comp.usage.prompt_tokens - 1
        finally:
            s.stop()
    r = run(quiver_bin, "serve", "--chat-template", "/no/such/file", "--port", "0")
    assert r.returncode == 1 and "neither a file nor a Jinja template" in r.stderr


def test_generate_spellings_agree(quiver_bin, stories_dir):
    """quiver generate: vLLM/llama.cpp spellings and the positional model give the same output."""
    canon = ["generate", "--model", str(stories_dir), "--prompt", "Once upon", "--max-tokens", "12",
             "--temperature", "0", "--max-model-len", "128", "--max-num-seqs", "2",
             "--max-num-batched-tokens", "64", "--num-kv-blocks", "32", "--no-enable-prefix-caching"]
    alias = ["generate", str(stories_dir), "-p", "Once upon", "-n", "12", "--temp=0", "-c", "128", "-np", "2",
             "-b", "64", "--n-kv-blocks=32", "--no-prefix-caching", "--dtype", "float32", "-tp", "1"]
    a, b = run(quiver_bin, *canon), run(quiver_bin, *alias)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and len(a.stdout) > 0
    r = run(quiver_bin, "generate", "--prompt", "x", "--frobnicate")
    assert r.returncode == 2 and "unknown option '--frobnicate'" in r.stderr
    r = run(quiver_bin, "generate", "--prompt", "x", "--dtype", "bfloat16")
    assert r.returncode == 1 and "not supported by the cpu backend" in r.stderr
    r = run(quiver_bin, "bench", "engine", "--max-batch-tokens", "16", "--num-prompts", "2", "--input-len", "4",
            "--output-len", "2", "--runs", "1", "-t", "1")
    assert r.returncode == 0, r.stderr


# ---- metrics ----

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def val(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def promtool_check(text):
    """promtool check metrics, accepting only its lint about ':' in metric names: vLLM's names
    (vllm:*) carry a colon by design and promtool reserves colons for recording rules."""
    exe = shutil.which("promtool")
    if not exe:
        pytest.skip("promtool not installed (scripts/setup installs Debian's prometheus package)")
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = [l for l in (r.stdout + r.stderr).splitlines()
                if l.strip() and not re.match(r"^vllm:\w+ metric names should not contain ':'$", l.strip())]
    assert r.returncode in (0, 3) and not problems, r.stdout + r.stderr


def test_vllm_metrics_move_and_pass_promtool(quiver_bin):
    # A small KV pool so four long requests at once must preempt; prefix caching on.
    s = Server(quiver_bin, ["--max-model-len", "160", "--num-kv-blocks", "12", "--block-size", "16",
                            "--max-num-seqs", "4"])
    try:
        _, body = s.get("/metrics")
        before = parse_metrics(body.decode())
        promtool_check(body.decode())
        M = dict(model_name="quiver-tiny")
        assert val(before, "vllm:kv_cache_usage_perc", **M) == 0
        assert val(before, "vllm:e2e_request_latency_seconds_count", **M) == 0

        # Usage sampled while four streams run. quiver-tiny can finish all four between two
        # samples, so the round repeats (at most 20 times) until a sample has caught it running.
        c = s.client()

        def one(i):
            st = c.completions.create(model="quiver-tiny", prompt="x" * (20 + i), max_tokens=100,
                                      temperature=0, stream=True, extra_body={"ignore_eos": True})
            return sum(1 for _ in st)

        usage, rounds = [], 0
        while rounds < 20 and not (usage and max(usage) > 0):
            rounds += 1
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    _, b = s.get("/metrics")
                    usage.append(val(parse_metrics(b.decode()), "vllm:kv_cache_usage_perc", **M))
                    time.sleep(0.002)

            t = threading.Thread(target=sample)
            t.start()
            threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(120)
            stop.set()
            t.join(30)
        assert usage and all(0.0 <= u <= 1.0 for u in usage) and max(usage) > 0
        # Same prompt twice (> one block): the second is a prefix-cache hit.
        for _ in range(2):
            c.completions.create(model="quiver-tiny", prompt="y" * 40, max_tokens=2,
                                 extra_body={"ignore_eos": True})
        for path in ("/health", "/v1/models", "/version", "/nope"):
            s.get(path)
        s.post("/tokenize", {"model": "quiver-tiny", "prompt": "abc"})
        s.wait_idle()
        _, body = s.get("/metrics")
        text = body.decode()
        after = parse_metrics(text)
        promtool_check(text)
    finally:
        s.stop()
    assert val(after, "vllm:kv_cache_usage_perc", **M) == 0
    assert val(after, "vllm:num_requests_running", **M) == 0
    assert val(after, "vllm:num_requests_waiting", **M) == 0
    assert val(after, "vllm:num_preemptions_total", **M) > 0
    assert val(after, "vllm:prefix_cache_hits_total", **M) >= 32
    assert val(after, "vllm:prefix_cache_queries_total", **M) >= val(after, "vllm:prefix_cache_hits_total", **M)
    assert val(after, "vllm:request_success_total", finished_reason="length", **M) == 4 * rounds + 2
    assert val(after, "vllm:generation_tokens_total", **M) == rounds * 4 * 100 + 2 * 2
    assert val(after, "vllm:request_generation_tokens_sum", **M) == rounds * 400 + 4
    assert val(after, "vllm:request_prompt_tokens_count", **M) == 4 * rounds + 2
    for h in ("e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
              "request_decode_time_seconds", "time_to_first_token_seconds"):
        assert val(after, f"vllm:{h}_count", **M) == 4 * rounds + 2, h
        assert val(after, f"vllm:{h}_bucket", le="+Inf", **M) == 4 * rounds + 2, h
    assert val(after, "vllm:inter_token_latency_seconds_count", **M) == rounds * 4 * 99 + 2 * 1
    # Counters never go down.
    for k, v in before.items():
        if k[0].endswith("_total") or k[0].endswith("_count") or k[0].endswith("_sum"):
            assert after.get(k, 0) >= v, k
    # Utility endpoints are counted apart, never as a model "".
    assert not any(k[0] == "quiver_requests_total" and ("model", "") in k[1] for k in after)
    assert val(after, "quiver_utility_requests_total", status="200") >= 5
    assert val(after, "quiver_utility_requests_total", status="404") == 1
    assert val(after, "quiver_requests_total", model="quiver-tiny", status="200") == 4 * rounds + 2


# ---- CORS ----

def preflight(port, origin, method="POST", headers=None):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    c.request("OPTIONS", "/v1/chat/completions", headers=h)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def test_cors(quiver_bin):
    s = Server(quiver_bin, [])
    try:  # off by default: no CORS headers, a preflight is not answered as one
        st, h = preflight(s.port, "http://app.example")
        assert st == 405 and "access-control-allow-origin" not in h
        st, _, h = s.post("/v1/completions", {"model": "quiver-tiny", "prompt": "a", "max_tokens": 1},
                          {"Origin": "http://app.example"})
        assert st == 200 and "Access-Control-Allow-Origin" not in h
    finally:
        s.stop()
    s = Server(quiver_bin, ["--allowed-origins", '["http://app.example"]', "--api-key", "k"])
    try:
        st, h = preflight(s.port, "http://app.example", headers="authorization, content-type")
        assert st == 204
        assert h["access-control-allow-origin"] == "http://app.example"
        assert "POST" in h["access-control-allow-methods"]
        assert h["access-control-allow-headers"] == "authorization, content-type"
        st, h = preflight(s.port, "http://evil.example")
        assert st == 204 and "access-control-allow-origin" not in h
        st, _, h = s.post("/v1/completions", {"model": "quiver-tiny", "prompt": "a", "max_tokens": 1},
                          {"Origin": "http://app.example", "Authorization": "Bearer k"})
        assert st == 200 and h["Access-Control-Allow-Origin"] == "http://app.example"
        # Error answers carry the headers too (a browser must be able to read the 401).
        st, _, h = s.post("/v1/completions", {"model": "quiver-tiny", "prompt": "a"}, {"Origin": "http://app.example"})
        assert st == 401 and h["Access-Control-Allow-Origin"] == "http://app.example"
    finally:
        s.stop()
    s = Server(quiver_bin, ["--allowed-origins", "*", "--allowed-methods", "GET,POST",
                            "--allowed-headers", "X-Custom"])
    try:
        st, h = preflight(s.port, "http://any.example", headers="x-other")
        assert st == 204 and h["access-control-allow-origin"] == "*"
        assert h["access-control-allow-methods"] == "GET, POST"
        assert h["access-control-allow-headers"] == "X-Custom"
    finally:
        s.stop()


# ---- TLS ----

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A server certificate for 127.0.0.1, a client CA with one client certificate, and a second
    CA (with its own client) the server does not trust."""
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed (scripts/setup installs it)")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.pem",
            "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=d)
    for ca in ("ca", "rogue"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN={ca}", cwd=d)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}-client.key", "-out", f"{ca}-client.csr",
                "-subj", "/CN=client", cwd=d)
        openssl("x509", "-req", "-in", f"{ca}-client.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{ca}-client.pem", "-days", "2", cwd=d)
    return d


def tls_client(s, pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki / "server.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return openai.OpenAI(base_url=f"https://127.0.0.1:{s.port}/v1", api_key="none", max_retries=0, timeout=60,
                         http_client=httpx.Client(verify=ctx, timeout=60))


def closed_within(port, payload, limit):
    """Sends payload and waits for the server to close; returns the seconds it took and what came."""
    t0 = time.time()
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit + 10)
    got = b""
    try:
        sock.sendall(payload)
        while True:
            b = sock.recv(4096)
            if not b:
                break
            got += b
    except (ConnectionResetError, socket.timeout):
        pass
    finally:
        sock.close()
    return time.time() - t0, got


def test_tls_openai_sdk_and_failures(quiver_bin, pki):
    s = Server(quiver_bin, ["--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key"),
                            "--header-timeout", "2"])
    try:
        assert "listening on https://" in s.read_log()
        c = tls_client(s, pki)
        # ignore_eos: quiver-tiny samples random tokens and may end early; the lengths are the point.
        r = c.completions.create(model="quiver-tiny", prompt="hello", max_tokens=8, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 8
        chunks = list(c.chat.completions.create(model="quiver-tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, stream=True, extra_body={"ignore_eos": True}))
        assert chunks[-1].choices[0].finish_reason == "length"
        # Plain HTTP to the TLS port: closed at once (no HTTP answer, no crash).
        took, got = closed_within(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 10)
        assert took < 5 and b"200 OK" not in got
        # A stalled handshake (the start of a ClientHello, then nothing): closed by the header timeout.
        took, _ = closed_within(s.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 15)
        assert 1.5 < took < 8
        # The handshake and the first request's headers share one header timeout: a client that
        # completes the handshake and then waits past it is closed.
        ctx = ssl.create_default_context(cafile=str(pki / "server.pem"))
        t0 = time.time()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw_sock:
            with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as tls:
                try:
                    assert tls.recv(1) == b""
                except (ConnectionResetError, ssl.SSLError):
                    pass
        assert 1.5 < time.time() - t0 < 8
        # Garbage records: closed.
        took, _ = closed_within(s.port, bytes(range(256)) * 4, 10)
        assert took < 5
        # The server still serves after all that.
        assert c.completions.create(model="quiver-tiny", prompt="x", max_tokens=1).usage.completion_tokens == 1
        with httpx.Client(verify=str(pki / "server.pem")) as h:
            v = h.get(f"https://127.0.0.1:{s.port}/version").json()
            assert v["tls"] is True
    finally:
        s.stop()


def test_mutual_tls(quiver_bin, pki):
    s = Server(quiver_bin, ["--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key"),
                            "--ssl-ca-certs", str(pki / "ca.pem"), "--header-timeout", "2"])
    try:
        r = tls_client(s, pki, cert="ca-client").completions.create(model="quiver-tiny", prompt="a", max_tokens=2)
        assert r.usage.completion_tokens == 2
        for cert in (None, "rogue-client"):  # no client certificate; one from a CA not trusted
            with pytest.raises(openai.APIConnectionError):
                tls_client(s, pki, cert=cert).completions.create(model="quiver-tiny", prompt="a", max_tokens=2)
    finally:
        s.stop()
    r = run(quiver_bin, "serve", "--ssl-certfile", str(pki / "server.pem"), "--ssl-keyfile", str(pki / "ca.key"),
            "--port", "0")
    assert r.returncode == 1 and ("does not match" in r.stderr or "mismatch" in r.stderr)
    r = run(quiver_bin, "serve", "--ssl-certfile", "/no/cert.pem", "--ssl-keyfile", "/no/key.pem", "--port", "0")
    assert r.returncode == 1 and "cannot load certificate" in r.stderr
