"""Tensor parallelism end to end: one model served by two `quiver serve` processes on 127.0.0.1
(--nnodes 2, the shm communicator between them, the control channel from node 0) answers through
the openai SDK exactly as TP 1 does; killing the worker makes node 0 answer 503 and exit non-zero
within the stated time; forged and oversized control-channel traffic is refused and logged while
the real worker still joins; the real SmolLM2 and Qwen2.5-Coder GGUFs give TP 1's logits and greedy tokens at TP 2 (release
binary)."""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from test_gguf_models import model_path, rel_bin  # noqa: F401  (fixture)
from test_server import Server

TOKEN = "e2e-tp-token-0123456789"
LOST_EXIT_S = 15  # README: a killed node is seen within 0.1 s, then 2 s grace and the drain


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A node-rank-1 process; its log in a file."""

    def __init__(self, bin_, model, port, extra=(), token=TOKEN):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="quiver-tp-worker-", suffix=".log", delete=False)
        env = dict(os.environ, QUIVER_TP_TOKEN=token)
        self.proc = subprocess.Popen([bin_, "serve", str(model), "--tp", "2", "--nnodes", "2", "--node-rank", "1",
                                      "--master-port", str(port), "--threads", "1", *extra],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env)

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()


def node0(bin_, model, port):
    return Server(bin_, [str(model), "--tp", "2", "--nnodes", "2", "--node-rank", "0", "--master-port", str(port),
                         "--threads", "2", "-b", "256", "--num-kv-blocks", "256"],
                  env={"QUIVER_TP_TOKEN": TOKEN})


def stop(srv, code=0):
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == code, srv.read_log()[-3000:]


PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben went to the park"]


def completions(srv, name):
    c = srv.client()
    return [c.completions.create(model=name, prompt=p, max_tokens=24, temperature=0).choices[0].text
            for p in PROMPTS]


def test_two_processes_answer_as_tp1(quiver_bin, stories_dir):
    one = Server(quiver_bin, [str(stories_dir), "--threads", "1", "-b", "256", "--num-kv-blocks", "256"])
    try:
        want = completions(one, "stories260K")
    finally:
        stop(one)
    port = free_port()
    w = Worker(quiver_bin, stories_dir, port)
    srv = node0(quiver_bin, stories_dir, port)
    try:
        assert completions(srv, "stories260K") == want
        st, h = srv.health()
        assert st == 200 and h["models"][0]["state"] == "ready"
    finally:
        stop(srv)
    # node 0's orderly stop tells the worker to stop: it exits 0.
    assert w.proc.wait(30) == 0, w.read_log()[-3000:]
    assert "stopped by node 0" in w.read_log()


def test_config_file_tensor_parallel_size(quiver_bin, stories_dir):
    """"tensor_parallel_size" of a model in the config file shards it like the flag does."""
    one = Server(quiver_bin, [str(stories_dir), "--threads", "1", "-b", "256", "--num-kv-blocks", "256"])
    try:
        want = completions(one, "stories260K")
    finally:
        stop(one)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"models": [{"name": "stories260K", "path": str(stories_dir), "tensor_parallel_size": 2}]}, f)
    try:
        srv = Server(quiver_bin, ["--config", f.name, "--threads", "2", "-b", "256", "--num-kv-blocks", "256"])
        try:
            assert completions(srv, "stories260K") == want
            assert "sharded over 2 ranks" in srv.read_log()
        finally:
            stop(srv)
    finally:
        os.unlink(f.name)


def test_killed_worker_makes_node0_unhealthy_and_exit(quiver_bin, stories_dir):
    port = free_port()
    w = Worker(quiver_bin, stories_dir, port)
    srv = node0(quiver_bin, stories_dir, port)
    try:
        assert srv.health()[0] == 200
        w.proc.kill()
        w.proc.wait(10)
        t0 = time.time()
        saw_503 = False
        while time.time() - t0 < 10 and srv.proc.poll() is None:
            try:
                if srv.health()[0] == 503:
                    saw_503 = True
                    break
            except OSError:
                break
            time.sleep(0.1)
        assert saw_503, srv.read_log()[-3000:]
        assert srv.proc.wait(LOST_EXIT_S) != 0
        assert time.time() - t0 < LOST_EXIT_S
        assert "node 1 lost" in srv.read_log()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)


CTRL_VERSION = 2  # QV_CTRL_VERSION (2: INIT carries the communicator kind and the NCCL id)


def ctrl_frame(type_, payload, length=None, version=CTRL_VERSION):
    """A control-channel frame with a made-up tag (ctrl.h's layout)."""
    n = len(payload) if length is None else length
    return b"QVC1" + struct.pack(">HHQI", version, type_, 0, n) + payload + b"\0" * 32


def test_forged_and_oversized_control_messages_refused(quiver_bin, stories_dir):
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="quiver-tp-node0-", suffix=".log", delete=False)
    env = dict(os.environ, QUIVER_TP_TOKEN=TOKEN)
    p0 = subprocess.Popen([quiver_bin, "serve", str(stories_dir), "--host", "127.0.0.1", "--port", "0", "--tp", "2",
                           "--nnodes", "2", "--master-port", str(port), "--threads", "2", "--num-kv-blocks", "64"],
                          stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        def attack(frame):
            deadline = time.time() + 60
            while True:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    break
                except OSError:
                    assert time.time() < deadline and p0.poll() is None
                    time.sleep(0.1)
            with s:
                s.settimeout(5)
                try:
                    s.recv(4096)  # the server's HELLO
                    s.sendall(frame)
                    s.recv(4096)  # closed on us
                except OSError:
                    pass

        attack(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 64)                    # not a frame
        attack(ctrl_frame(2, b"", length=1 << 30))                        # oversized
        attack(ctrl_frame(2, b"\0" * 68, version=1))                      # a node of the previous protocol
        attack(ctrl_frame(2, b"\0" * 68))                                 # AUTH with a forged proof
        bad = Worker(quiver_bin, stories_dir, port, token="wrong-token-but-long-enough")
        assert bad.proc.wait(60) != 0
        w = Worker(quiver_bin, stories_dir, port)
        deadline = time.time() + 120
        with open(log.name, errors="replace") as f:
            text = ""
            while "listening on" not in text and time.time() < deadline and p0.poll() is None:
                time.sleep(0.1)
                text += f.read()
        assert "listening on" in text, text[-3000:]
        for needle in ("bad frame magic", "exceeds the", "protocol version 1", "a node failed to join"):
            assert needle in text, f"'{needle}' not logged:\n{text[-3000:]}"
    finally:
        p0.send_signal(signal.SIGTERM)
        assert p0.wait(60) == 0
    assert w.proc.wait(30) == 0


# SmolLM2 splits its 3 KV heads unevenly (6 and 3 query heads); Qwen2.5-Coder's down_proj splits
# on quantization block boundaries.
REAL = {"smollm2": "1 9690 198 2683 359 253 5356 5646 11173 3365 3511 308 34519 28 7018",
        "qwen2.5-coder": "151644 8948 198 2610 525 264 10950 17847 13 151645 198 151644 872 198 9707"}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_logits_and_greedy_at_tp2(rel_bin, name):  # noqa: F811
    path = model_path(name)
    ids = REAL[name]
    out = {}
    for tp in (1, 2):
        r = subprocess.run([rel_bin, "logits", "--model", path, "--threads", "2", "--tp", str(tp), "--prompt-ids", ids,
                            "--rows", "0 7 14"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out[tp] = json.loads(r.stdout)["rows"]
    for a, b in zip(out[2], out[1]):
        x, y = a["logits"], b["logits"]
        err = max(abs(p - q) for p, q in zip(x, y)) / max(abs(q) for q in y)
        assert err <= 1e-5, f"row {a['row']}: rel err {err:.3g}"
    gen = {}
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write(json.dumps({"prompt_ids": [int(i) for i in ids.split()], "max_tokens": 12, "temperature": 0,
                            "ignore_eos": True}) + "\n")
    try:
        for tp in (1, 2):
            r = subprocess.run([rel_bin, "generate", "--model", path, "--threads", "2", "--tp", str(tp), "--prompts",
                                f.name, "--ids"], capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-2000:]
            gen[tp] = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip().startswith("{")]
    finally:
        os.unlink(f.name)
    assert gen[2] == gen[1]


def test_tp_refusals(quiver_bin, stories_dir):
    r = subprocess.run([quiver_bin, "generate", "--model", str(stories_dir), "--tp", "16", "--prompt", "x",
                        "--max-tokens", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "does not split" in r.stderr, r.stderr
    r = subprocess.run([quiver_bin, "serve", "--tp", "2", "--nnodes", "2", "--master-port", "1"], capture_output=True,
                       text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "QUIVER_TP_TOKEN"})
    assert r.returncode == 2 and "--tp-token" in r.stderr, r.stderr
    r = subprocess.run([quiver_bin, "info", "--model", str(stories_dir), "--tp", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "rank 0" in r.stdout and "rank 1" in r.stdout


RANK_LINE = r"rank (\d+)\s+weights [\d.]+ MiB \((\d+) bytes\), KV (\d+) bytes per token(?:, resident \+([\d.]+) MiB)?"


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_model_per_rank_resident_bytes(rel_bin, name):  # noqa: F811
    """Each rank's measured resident bytes (anonymous memory the process grew by while that rank
    loaded) are within 10% of its expected share: the whole model's bytes / 2 (plus the
    replicated norms, which are tiny next to the matrices)."""
    import re
    path = model_path(name)
    got = {}
    for tp in (1, 2):
        r = subprocess.run([rel_bin, "info", "--model", path, "--tp", str(tp)], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        got[tp] = [(int(b), int(kv), float(res or 0) * 1048576) for _, b, kv, res in re.findall(RANK_LINE, r.stdout)]
    assert len(got[1]) == 1 and len(got[2]) == 2
    whole = got[1][0][0]
    for r, (placed, kv, resident) in enumerate(got[2]):
        share = whole / 2
        assert abs(resident - share) <= 0.1 * share, f"rank {r}: resident {resident:.0f} vs share {share:.0f}"
        assert abs(resident - placed) <= 0.1 * placed, f"rank {r}: resident {resident:.0f} vs placed {placed}"
    assert sum(kv for _, kv, _ in got[2]) == got[1][0][1]
