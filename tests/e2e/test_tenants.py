"""Tenants and route strategies end to end through the official openai and anthropic SDKs:
a key limited to one model gets 403 in both error shapes and sees only its model in
/v1/models; request and token quotas answer 429 with Retry-After and recover; a weighted
route splits as configured; a least_loaded route sends a request away from a busy model;
the per-tenant metrics count it all by tenant name (never the key). Models: two instances of
the embedded quiver-tiny (fast to load), so the tests take seconds."""
import json
import os
import re
import subprocess
import tempfile
import time

import anthropic
import openai
import pytest

from test_server import Server

CFG = {
    "models": [{"name": "a", "path": "quiver-tiny", "max_model_len": 4096},
               {"name": "b", "path": "quiver-tiny", "max_model_len": 4096}],
    "aliases": {"a-alias": "a"},
    "routes": {
        "canary": {"strategy": "weighted", "seed": 1,
                   "targets": [{"model": "a", "weight": 80}, {"model": "b", "weight": 20}]},
        "pool": {"strategy": "least_loaded", "targets": ["a", "b"]},
    },
    "api_keys": ["sk-root"],
    "tenants": [
        {"name": "team-a", "keys": ["sk-team-a"], "models": ["a-alias"],
         "requests_per_minute": 2, "window_s": 4},
        {"name": "team-t", "keys": ["sk-team-t"], "tokens_per_minute": 40, "window_s": 8},
        {"name": "chat-only", "keys": ["sk-chat"], "endpoints": ["/v1/chat/completions"]},
    ],
}


@pytest.fixture(scope="module")
def srv(quiver_bin):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(CFG, f)
    s = Server(quiver_bin, ["--config", f.name])
    yield s
    log = s.stop()
    os.unlink(f.name)
    for key in ("sk-team-a", "sk-team-t", "sk-chat", "sk-root"):
        assert key not in log, "a key reached the log"


NO_EOS = {"ignore_eos": True}


def oai(s, key):
    return openai.OpenAI(base_url=s.base + "/v1", api_key=key, max_retries=0, timeout=60)


def anth(s, key):
    return anthropic.Anthropic(base_url=s.base, api_key=key, max_retries=0, timeout=60)


def metric(s, line_re):
    st, body = s.get("/metrics", {"Authorization": "Bearer sk-root"})
    assert st == 200
    m = re.search(line_re + r" (\d+)", body.decode())
    return int(m.group(1)) if m else None


def test_permissions_openai_and_anthropic(srv):
    a = oai(srv, "sk-team-a")
    assert [m.id for m in a.models.list().data] == ["a-alias"]
    assert len(oai(srv, "sk-root").models.list().data) == 5
    out = a.completions.create(model="a-alias", prompt="hi", max_tokens=2)
    assert out.choices[0].text is not None
    with pytest.raises(openai.PermissionDeniedError) as e:
        a.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.status_code == 403
    assert e.value.body["type"] == "permission_error"
    assert e.value.body["code"] == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        anth(srv, "sk-team-a").messages.create(model="b", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "permission_error"
    # The Responses API answers in the OpenAI shape.
    with pytest.raises(openai.PermissionDeniedError) as e:
        a.responses.create(model="b", input="hi", max_output_tokens=4)
    assert e.value.body["type"] == "permission_error"
    # An endpoint the key may not call: 403 before the body is read.
    with pytest.raises(openai.PermissionDeniedError):
        oai(srv, "sk-chat").completions.create(model="a", prompt="hi", max_tokens=2)
    with pytest.raises(anthropic.PermissionDeniedError):
        anth(srv, "sk-chat").messages.create(model="a", max_tokens=4,
                                             messages=[{"role": "user", "content": "hi"}])
    assert oai(srv, "sk-chat").chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices
    with pytest.raises(openai.AuthenticationError):
        oai(srv, "sk-team-").models.list()
    assert metric(srv, r'quiver_tenant_requests_total\{tenant="team-a",status="403"\}') == 3
    assert metric(srv, r'quiver_tenant_requests_total\{tenant="chat-only",status="403"\}') == 2


def test_request_quota_429_retry_after_and_recovery(srv):
    time.sleep(2.1)  # team-a's bucket (one request per 2 s) refills after the test above
    a = oai(srv, "sk-team-a")
    for left in (1, 0):
        raw = a.completions.with_raw_response.create(model="a-alias", prompt="hi", max_tokens=2)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(left)
    with pytest.raises(openai.RateLimitError) as e:
        a.completions.create(model="a-alias", prompt="hi", max_tokens=2)
    retry = int(e.value.response.headers["retry-after"])
    assert 1 <= retry <= 2
    assert e.value.body["type"] == "rate_limit_error"
    # Anthropic's SDK sees its own shape for the same quota.
    with pytest.raises(anthropic.RateLimitError) as e:
        anth(srv, "sk-team-a").messages.create(model="a-alias", max_tokens=2,
                                               messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert int(e.value.response.headers["retry-after"]) >= 1
    time.sleep(retry + 0.1)
    assert a.completions.create(model="a-alias", prompt="hi", max_tokens=2).choices
    assert metric(srv, r'quiver_tenant_rate_limited_total\{tenant="team-a",limit="requests"\}') == 2


def test_token_quota_429_and_recovery(srv):
    t = oai(srv, "sk-team-t")
    # 40 tokens per 8 s (5/s). The prompt "h" is 2 tokens ("<s>", "h"); max_tokens 16 (eos
    # ignored, so all 16 are used) reserves 18: two fit, the third waits.
    n_ok = 0
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(5):
            t.completions.create(model="a", prompt="h", max_tokens=16, extra_body=NO_EOS)
            n_ok += 1
    assert n_ok == 2
    assert "tokens" in e.value.body["message"]
    retry = int(e.value.response.headers["retry-after"])
    assert 1 <= retry <= 4  # (18 - what is left) / 5 per second
    # Too large for the whole limit: 429 without Retry-After.
    with pytest.raises(openai.RateLimitError) as e:
        t.completions.create(model="a", prompt="h", max_tokens=100)
    assert e.value.body["code"] == "request_too_large"
    assert "retry-after" not in e.value.response.headers
    time.sleep(retry + 0.1)
    assert t.completions.create(model="a", prompt="h", max_tokens=16, extra_body=NO_EOS).choices
    assert metric(srv, r'quiver_tenant_prompt_tokens_total\{tenant="team-t"\}') == 6
    assert metric(srv, r'quiver_tenant_generation_tokens_total\{tenant="team-t"\}') == 48


def test_weighted_split(srv):
    c = oai(srv, "sk-root")
    served = []
    for _ in range(100):
        raw = c.completions.with_raw_response.create(model="canary", prompt="hi", max_tokens=1)
        served.append(raw.headers["x-quiver-model"])
        assert raw.parse().model == "canary"
    n_b = served.count("b")
    assert served.count("a") + n_b == 100
    assert 8 <= n_b <= 35, n_b  # 20% of 100: sd 4
    # A request id pins the model: retries land on the same one.
    for i in range(4):
        models = {c.completions.with_raw_response.create(
            model="canary", prompt="hi", max_tokens=1,
            extra_headers={"X-Request-Id": f"req-{i}"}).headers["x-quiver-model"] for _ in range(3)}
        assert len(models) == 1


def test_least_loaded(srv):
    c = oai(srv, "sk-root")
    idle = c.completions.with_raw_response.create(model="pool", prompt="hi", max_tokens=1)
    assert idle.headers["x-quiver-model"] == "a"  # a tie: the listed order
    # A long stream keeps a busy (4,000 tokens: seconds even on a fast machine, where the
    # next request takes milliseconds): the next request goes to b.
    with c.completions.with_streaming_response.create(model="pool", prompt="hi", max_tokens=4000,
                                                       stream=True, extra_body=NO_EOS) as busy:
        assert busy.headers["x-quiver-model"] == "a"
        lines = busy.iter_lines()
        next(lines)
        other = c.completions.with_raw_response.create(model="pool", prompt="hi", max_tokens=1)
        assert other.headers["x-quiver-model"] == "b"
    srv.wait_idle()
    assert c.completions.with_raw_response.create(
        model="pool", prompt="hi", max_tokens=1).headers["x-quiver-model"] == "a"


def test_tenant_metrics_pass_promtool(srv):
    from test_ops import promtool_check
    st, body = srv.get("/metrics", {"Authorization": "Bearer sk-root"})
    assert st == 200 and b'quiver_tenant_request_duration_seconds_bucket{tenant="team-a"' in body
    promtool_check(body.decode())


@pytest.mark.parametrize("cfg,needle", [
    ({"routes": {"r": {"strategy": "random", "targets": ["a"]}}}, "unknown strategy 'random'"),
    ({"routes": {"r": {"strategy": "weighted", "targets": [{"model": "a", "weight": 0}]}}},
     "weights sum to zero"),
    ({"routes": {"r": ["a", "s"], "s": ["r"]}}, "routes do not nest"),
    ({"tenants": [{"name": "t", "keys": ["sk-hidden"], "tokens_per_minute": 1e300}]},
     "'tokens_per_minute' must be an integer"),
    ({"tenants": [{"name": "t", "keys": ["sk-hidden"], "models": ["ghost"]}]}, "'ghost'"),
    ({"tenants": [{"name": "t", "keys": "sk-hidden"}]}, "'keys' must be an array"),
    ({"tenants": [{"name": "t", "keys": ["sk-hidden"]}, {"name": "u", "keys": ["sk-hidden"]}]},
     "key #1 is also key #1 of tenant 't'"),
])
def test_bad_configs_stop_startup(quiver_bin, tmp_path, cfg, needle):
    cfg = dict(cfg, models=[{"name": "a", "path": "quiver-tiny"}])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    r = subprocess.run([quiver_bin, "serve", "--config", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "sk-hidden" not in r.stderr
