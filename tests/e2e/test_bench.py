"""End-to-end tests of quiver-bench (the load generator): against the stdlib mock OpenAI server in
bench_mock_server.py (known answers, injected failures) and against a live `quiver serve`.

The binary is $QV_BENCH_BIN or build/asan/quiver-bench; the server is $QV_BIN (default
build/asan/quiver). Every run also checks that quiver-bench exits cleanly (under ASan a leak
changes the exit status).
"""
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import bench_mock_server

ROOT = Path(__file__).resolve().parents[2]
BENCH = os.environ.get("QV_BENCH_BIN", str(ROOT / "build/asan/quiver-bench"))
QV_BIN = os.environ.get("QV_BIN", str(ROOT / "build/asan/quiver"))
SHARED = Path(os.environ.get("QV_SHARED_DIR", ROOT.parent / "shared"))


def run_bench(args, tmp_path, timeout=120):
    out = tmp_path / "result.json"
    r = subprocess.run([BENCH, "--no-progress", "--result-file", str(out)] + args,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    return r, json.loads(out.read_text())


def check_consistent(res, usage=True):
    """Invariants every result must satisfy."""
    reqs = res["requests"]
    ok = [q for q in reqs if q["success"]]
    assert res["completed"] == len(ok)
    assert res["failed"] == len(reqs) - len(ok)
    for q in ok:
        assert 0 < q["ttft_s"] <= q["e2el_s"]
        assert q["usage_reported"] == usage
        assert len(q["itl_s"]) == max(q["chunks"] - 1, 0)
        assert q["start_s"] + q["e2el_s"] <= res["duration"] + 1e-6
    total_out = sum(q["output_tokens"] for q in ok)
    total_in = sum(q["prompt_tokens"] for q in ok)
    assert res["total_output_tokens"] == total_out
    assert res["total_input_tokens"] == total_in
    dur = res["duration"]
    assert dur > 0
    assert res["output_throughput"] == pytest.approx(total_out / dur, rel=1e-9)
    assert res["total_token_throughput"] == pytest.approx((total_in + total_out) / dur, rel=1e-9)
    assert res["request_throughput"] == pytest.approx(len(ok) / dur, rel=1e-9)
    if ok:
        assert res["median_ttft_ms"] <= max(q["e2el_s"] for q in ok) * 1e3 + 1e-6


@pytest.fixture
def mock():
    servers = []

    def start(**kw):
        s = bench_mock_server.start(**kw)
        servers.append(s)
        return s, "http://127.0.0.1:%d" % s.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_random_dataset_against_mock(mock, tmp_path):
    srv, url = mock()
    r, res = run_bench(["--base-url", url, "--num-prompts", "12", "--input-len", "40", "--output-len", "10",
                        "--range-ratio", "0.5", "--max-concurrency", "3", "--seed", "7",
                        "--percentiles", "50,90,99", "--goodput", "ttft:60000,tpot:60000"], tmp_path)
    check_consistent(res)
    assert res["completed"] == 12 and res["failed"] == 0
    assert res["max_in_flight"] <= 3
    # Keep-alive: three slots need at most three connections (the setup calls' one is reused).
    assert 1 <= res["connections_opened"] <= 3
    assert res["request_goodput"] == pytest.approx(12 / res["duration"], rel=1e-9)
    # Output tokens equal what the server reported, request by request (the mock sends one
    # token per chunk, so the chunk count must agree too).
    sent = sorted(n for _, what, n in srv.log if what == "ok")
    assert sorted(q["output_tokens"] for q in res["requests"]) == sent
    for q in res["requests"]:
        assert q["chunks"] == q["output_tokens"]
        assert 5 <= q["output_tokens"] <= 15
        assert 19 <= q["prompt_tokens"] <= 61
    assert "Serving Benchmark Result" in r.stdout and "P90 TTFT (ms):" in r.stdout
    assert "Request goodput (req/s):" in r.stdout


def test_random_prompts_have_exact_length(mock, tmp_path):
    srv, url = mock()
    # With range ratio 0 every prompt must count exactly --input-len tokens at the server
    # (the mock's tokenizer adds one BOS, which quiver-bench accounts for).
    saved = tmp_path / "prompts.jsonl"
    _, res = run_bench(["--base-url", url, "--num-prompts", "6", "--input-len", "33", "--output-len", "3",
                        "--prefix-len", "5", "--save-prompts", str(saved)], tmp_path)
    check_consistent(res)
    assert [q["prompt_tokens"] for q in res["requests"]] == [38] * 6
    # The saved prompts replay as a JSONL dataset with the same lengths (how the same prompts
    # go to a server without /tokenize), and share their 5-token prefix.
    lines = [json.loads(x) for x in saved.read_text().splitlines()]
    assert len(lines) == 6 and all(x["output_len"] == 3 for x in lines)
    assert len({x["prompt"][:5] for x in lines}) == 1 and len({x["prompt"] for x in lines}) > 1
    _, res2 = run_bench(["--base-url", url, "--dataset", "jsonl", "--dataset-path", str(saved),
                         "--num-prompts", "6"], tmp_path)
    assert [q["prompt_tokens"] for q in res2["requests"]] == [38] * 6
    assert [q["output_tokens"] for q in res2["requests"]] == [3] * 6


def test_failures_are_reported(mock, tmp_path):
    srv, url = mock(fail_every=4)
    r, res = run_bench(["--base-url", url, "--endpoint", "/v1/chat/completions", "--num-prompts", "16",
                        "--input-len", "16", "--output-len", "6", "--request-rate", "400", "--burstiness", "0.5",
                        "--warmup", "0"], tmp_path)
    check_consistent(res)
    bad = [e for e in srv.log if e[1] != "ok"]
    assert len(bad) == 8  # numbers 1,5,9,13 answer 500; 3,7,11,15 drop mid-stream
    assert res["failed"] == 8 and res["completed"] == 8
    errors = [q["error"] for q in res["requests"] if not q["success"]]
    assert sum("HTTP 500" in e and "mock failure" in e for e in errors) == 4
    assert sum("before the response completed" in e for e in errors) == 4
    assert "Failed requests:                         8" in r.stdout
    # The mock sends an empty role chunk at once and content only after sleeping 10 ms: TTFT
    # counts to the first chunk with content, so it cannot be shorter than that sleep.
    assert all(q["ttft_s"] >= 0.01 for q in res["requests"] if q["success"])
    assert "Errors:" in r.stdout


def test_timeout_fails_hung_requests(mock, tmp_path):
    srv, url = mock(hang_every=3)
    t0 = time.time()
    r, res = run_bench(["--base-url", url, "--num-prompts", "7", "--input-len", "8", "--output-len", "4",
                        "--max-concurrency", "7", "--timeout", "1.5"], tmp_path)
    assert time.time() - t0 < 20
    check_consistent(res)
    assert res["failed"] == 2 and res["completed"] == 5
    assert all("timed out after 1.5 s" in q["error"] for q in res["requests"] if not q["success"])


def test_servers_without_streaming_or_usage(mock, tmp_path):
    # A server that ignores "stream" answers one JSON object: it still counts, TTFT == E2EL.
    srv, url = mock(plain_json=True)
    _, res = run_bench(["--base-url", url, "--num-prompts", "4", "--input-len", "8", "--output-len", "5",
                        "--endpoint", "/v1/chat/completions"], tmp_path)
    check_consistent(res)
    assert res["completed"] == 4
    for q in res["requests"]:
        assert q["output_tokens"] == 5 and q["chunks"] == 1 and q["ttft_s"] == q["e2el_s"]
    # A server that sends no usage: output tokens fall back to content chunks, and the summary says so.
    srv, url = mock(no_usage=True)
    r, res = run_bench(["--base-url", url, "--num-prompts", "3", "--input-len", "8", "--output-len", "6"], tmp_path)
    check_consistent(res, usage=False)
    assert [q["output_tokens"] for q in res["requests"]] == [6, 6, 6]
    assert [q["prompt_tokens"] for q in res["requests"]] == [8, 8, 8]  # the dataset's count
    assert "carried no usage" in r.stdout


def test_broken_server_output_is_reported_not_fatal(mock, tmp_path):
    srv, url = mock(chaos=True)
    r, res = run_bench(["--base-url", url, "--dataset", "jsonl", "--dataset-path", str(_prompts(tmp_path)),
                        "--num-prompts", "8", "--max-concurrency", "1", "--model", "m"], tmp_path)
    reqs = res["requests"]
    # Sequential: request i is mock number i+1, so kinds run 1, 2, 3, 0, 1, 2, 3, 0.
    kinds = [(i + 1) % 4 for i in range(8)]
    assert [q["success"] for q in reqs] == [k == 1 for k in kinds]
    for q, k in zip(reqs, kinds):
        if k == 0:
            assert "malformed JSON" in q["error"]
        elif k == 1:
            assert not q["usage_reported"] and q["output_tokens"] == 1
        elif k == 2:
            assert "malformed HTTP response" in q["error"]
        else:
            assert "overloaded" in q["error"]
    assert res["failed"] == 6


def test_api_key(mock, tmp_path):
    srv, url = mock(api_key="s3cret")
    r = subprocess.run([BENCH, "--base-url", url, "--num-prompts", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr
    _, res = run_bench(["--base-url", url, "--api-key", "s3cret", "--num-prompts", "3", "--input-len", "8",
                        "--output-len", "2"], tmp_path)
    assert res["completed"] == 3


def _prompts(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('"hello"\n')
    return p


def test_sharegpt_and_jsonl_datasets(mock, tmp_path):
    srv, url = mock()
    convs = [
        {"id": "short", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]},
        {"id": "a", "conversations": [{"from": "human", "value": "Tell me a story."},
                                      {"from": "gpt", "value": "Once upon a time."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "What is two plus two?"},
                                      {"from": "gpt", "value": "Four."}]},
        {"id": "lonely", "conversations": [{"from": "human", "value": "nobody answers"}]},
    ]
    p = tmp_path / "sharegpt.json"
    p.write_text(json.dumps(convs))
    _, res = run_bench(["--base-url", url, "--dataset", "sharegpt", "--dataset-path", str(p),
                        "--num-prompts", "2", "--seed", "3"], tmp_path)
    check_consistent(res)
    # The byte-level mock counts one token per byte: the output lengths are the answers' lengths.
    assert sorted(q["output_tokens"] for q in res["requests"]) == [len("Four."), len("Once upon a time.")]
    j = tmp_path / "prompts.jsonl"
    j.write_text('{"prompt": "abc", "output_len": 4}\n"plain prompt"\n')
    _, res = run_bench(["--base-url", url, "--dataset", "jsonl", "--dataset-path", str(j),
                        "--num-prompts", "4", "--output-len", "2"], tmp_path)
    check_consistent(res)
    assert [q["output_tokens"] for q in res["requests"]] == [4, 2, 4, 2]
    assert [q["prompt_tokens"] for q in res["requests"]] == [4, 13, 4, 13]


def test_bad_inputs_fail_cleanly(mock, tmp_path):
    srv, url = mock()
    for args in (["--num-prompts", "0"], ["--request-rate", "nan"], ["--dataset", "nope"],
                 ["--goodput", "ttft:abc"], ["--dataset", "sharegpt"], ["--endpoint", "v1"], ["--bogus", "1"],
                 ["--range-ratio", "1"]):
        r = subprocess.run([BENCH, "--base-url", url] + args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert "quiver-bench:" in r.stderr
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    for args, msg in ((["--base-url", "http://127.0.0.1:%d" % dead_port], "connect"),
                      (["--base-url", "https://x"], "https"),
                      (["--base-url", url, "--dataset", "sharegpt", "--dataset-path", str(bad_json)], "JSON"),
                      (["--base-url", url, "--dataset", "jsonl", "--dataset-path", str(tmp_path / "none")], "open")):
        r = subprocess.run([BENCH, "--num-prompts", "2"] + args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (args, r.stderr)
        assert msg in r.stderr, r.stderr


def test_random_prompts_with_quiver_tokenizer(mock, tmp_path):
    """--tokenizer counts with quiver's tokenizer library instead of the server's /tokenize: the
    prompts must then be exactly --input-len tokens for that tokenizer (checked with
    `quiver tokenize`), whatever the server counts."""
    model = SHARED / "models/stories260K"
    if not model.is_dir():
        pytest.skip("stories260K not found at %s" % model)
    probe = subprocess.run([QV_BIN, "tokenize", "--tokenizer", str(model), "--text", "hi"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("quiver tokenize is not available in this build")
    srv, url = mock()
    saved = tmp_path / "prompts.jsonl"
    _, res = run_bench(["--base-url", url, "--tokenizer", str(model), "--num-prompts", "4", "--input-len", "30",
                        "--output-len", "3", "--save-prompts", str(saved), "--seed", "9"], tmp_path)
    check_consistent(res)
    assert res["settings"]["tokenizer"] == str(model)
    for line in saved.read_text().splitlines():
        p = json.loads(line)["prompt"]
        r = subprocess.run([QV_BIN, "tokenize", "--tokenizer", str(model), "--add-special", "--text", p],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)) == 30, p
    r = subprocess.run([BENCH, "--base-url", url, "--tokenizer", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--tokenizer" in r.stderr, r.stderr


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def live_quiver():
    """A live `quiver serve` with stories260K (the embedded model when absent); skipped when this
    build's quiver cannot serve yet."""
    if not Path(QV_BIN).exists():
        pytest.skip("no quiver binary at %s" % QV_BIN)
    port = _free_port()
    model = SHARED / "models/stories260K"
    cmd = [QV_BIN, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model.is_dir():
        cmd += ["--model", str(model)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = "http://127.0.0.1:%d" % port
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read()
            pytest.skip("quiver serve exited (%d): %s" % (proc.returncode, out[-300:]))
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("quiver serve did not answer within 60 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_live_quiver(live_quiver, tmp_path, endpoint):
    url = live_quiver
    j = tmp_path / "prompts.jsonl"
    j.write_text("\n".join(json.dumps({"prompt": p, "output_len": n}) for p, n in
                           [("Once upon a time", 24), ("Lily saw a big", 9), ("The sun was", 17)]))
    # Random prompts need the server's /tokenize; without it fall back to the JSONL prompts.
    try:
        req = urllib.request.Request(url + "/tokenize", data=json.dumps({"prompt": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=5).read()
        data = ["--dataset", "random", "--input-len", "24", "--output-len", "16"]
        want_out = [16] * 8
    except OSError:
        data = ["--dataset", "jsonl", "--dataset-path", str(j)]
        want_out = [24, 9, 17, 24, 9, 17, 24, 9]
    r, res = run_bench(["--base-url", url, "--endpoint", endpoint, "--num-prompts", "8", "--max-concurrency", "4",
                        "--ignore-eos", "--warmup", "2", "--request-rate", "50", "--seed", "3"] + data,
                       tmp_path, timeout=300)
    check_consistent(res)
    assert res["completed"] == 8 and res["failed"] == 0, r.stdout
    # With EOS ignored every request yields exactly what it asked for, and that is the count the
    # server's usage reported (usage_reported is checked in check_consistent).
    assert [q["output_tokens"] for q in res["requests"]] == want_out
    for q in res["requests"]:
        assert q["chunks"] >= 1 and q["prompt_tokens"] >= 1
        if data[1] == "random" and endpoint == "/v1/completions":
            assert q["prompt_tokens"] == 24  # exact-length prompts, as the server counts them
