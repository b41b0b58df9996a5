#!/usr/bin/env python3
"""Soak benchmark for `quiver serve` (issue 13): a long run of mixed, partly hostile load against
one server, watching that it keeps serving, that its memory stays flat and that a trivial request
stays fast. Not a test: it reports numbers.

Load (each kind in its own threads, all against 127.0.0.1):
- streams: streamed completions and chats read to the end; a share are dropped mid-stream;
- completions: non-streamed completions and chats (some with n=8 and logprobs);
- malformed: broken HTTP, broken or hostile JSON (trailing data, duplicate keys, NUL, invalid
  UTF-8), unknown routes, wrong keys, over-limit bodies (413) - each must get a 4xx;
- big: 1 MB /tokenize, 9 MB bodies over the limit, unread pipelined bursts;
- idle: connections that open and send nothing or dribble bytes (cut by the header timeout);
- probe: every 0.5 s a trivial completion (max_tokens 1), whose latency is reported.

Every 10 s the server's VmRSS (/proc/<pid>/status) is sampled. Results (requests served by kind,
errors by kind, RSS over time with its spread after warm-up, trivial-latency percentiles) are
written to --out every minute and at the end, so an interrupted run still leaves what it measured
(with the real duration).

usage: bench/soak/soak.py --bin build/release/quiver --model ../shared/models/stories260K \
           --duration 1800 --out bench/results/soak-....json
"""
import argparse
import collections
import http.client
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

KEY = "sk-soak"


class Stats:
    def __init__(self):
        self.mu = threading.Lock()
        self.served = collections.Counter()   # kind -> answers as expected
        self.errors = collections.Counter()   # "kind:what" -> unexpected outcomes
        self.trivial = []                     # seconds
        self.rss = []                         # [t, MB]

    def ok(self, kind):
        with self.mu:
            self.served[kind] += 1

    def err(self, kind, what):
        with self.mu:
            self.errors[f"{kind}:{what}"] += 1


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def conn(port, timeout=60):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def post(port, path, obj, key=KEY, timeout=60):
    c = conn(port, timeout)
    try:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        c.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {key}"})
        r = c.getresponse()
        data = r.read()
        return r.status, data
    finally:
        c.close()


def expect_json(data):
    json.loads(data.decode("utf-8"))


def worker_streams(port, st, stop, rng):
    while not stop.is_set():
        chat = rng.random() < 0.5
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"max_tokens": rng.randint(8, 128), "stream": True, "temperature": 0.8,
                "stream_options": {"include_usage": True}}
        if chat:
            body["messages"] = [{"role": "user", "content": "Tell me a story about a cat."}]
        else:
            body["prompt"] = "Once upon a time"
        drop = rng.random() < 0.2
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            data = json.dumps(body).encode()
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: "
                      b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                      % (path.encode(), KEY.encode(), len(data)) + data)
            got = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
                if drop and len(got) > 600:
                    break
            s.close()
            if drop:
                st.ok("stream_dropped")
            elif got.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in got:
                st.ok("stream")
            else:
                st.err("stream", got[:12].decode("latin-1") or "empty")
        except OSError as e:
            st.err("stream", type(e).__name__)


def worker_completions(port, st, stop, rng):
    while not stop.is_set():
        try:
            if rng.random() < 0.5:
                body = {"prompt": "Once upon a time", "max_tokens": rng.randint(1, 64), "temperature": 0.7}
                if rng.random() < 0.2:
                    body.update(n=8, logprobs=5)
                code, data = post(port, "/v1/completions", body)
            else:
                body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": rng.randint(1, 64)}
                if rng.random() < 0.2:
                    body.update(n=8, logprobs=True, top_logprobs=5)
                code, data = post(port, "/v1/chat/completions", body)
            expect_json(data)
            if code == 200:
                st.ok("completion")
            else:
                st.err("completion", str(code))
        except Exception as e:  # noqa: BLE001 (counted)
            st.err("completion", type(e).__name__)


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /health HTTP/2.0\r\n\r\n", 505),
    (b"GET /health\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n: v\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nA: b\r\n  c\r\n\r\n", 400),
    (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
    (b"DELETE /v1/models HTTP/1.1\r\n\r\n", 405),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 401),
    (b"POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode()
     + b"\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
]

BAD_JSON = [
    b'{"prompt":"Hi"} x',
    b'{"prompt":"Hi","prompt":"Ho"}',
    b'{"prompt":"Once\\u0000 upon"}',
    b'{"prompt":"caf\xe9"}',
    b'{"prompt":"Hi","logit_bias":{" 5":1}}',
    b'{"prompt":"Hi","n":128,"max_tokens":1,"prompt":["a"]}',
    b'{"prompt":',
    b'[1,2,3]',
]


def worker_malformed(port, st, stop, rng):
    while not stop.is_set():
        try:
            if rng.random() < 0.5:
                data, want = rng.choice(MALFORMED)
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                          if want in (401, 404, 405) else data)
                got = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    got += b
                s.close()
                m = re.match(rb"HTTP/1.1 (\d+)", got)
                code = int(m.group(1)) if m else None
                body = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b""
                if code == want:
                    expect_json(body)
                    st.ok("malformed_http")
                else:
                    st.err("malformed_http", f"{want}->{code}")
            else:
                code, data = post(port, "/v1/completions", rng.choice(BAD_JSON))
                expect_json(data)
                if code == 400:
                    st.ok("malformed_json")
                else:
                    st.err("malformed_json", str(code))
        except Exception as e:  # noqa: BLE001 (counted)
            st.err("malformed", type(e).__name__)
        stop.wait(0.05)


def worker_big(port, st, stop, rng):
    big_prompt = "Once upon a time " * (1_000_000 // 17)
    over = b'{"prompt":"' + b"a" * (9 << 20) + b'"}'
    while not stop.is_set():
        r = rng.random()
        try:
            if r < 0.4:
                code, data = post(port, "/tokenize", {"prompt": big_prompt}, timeout=120)
                ok = code == 200 and json.loads(data)["count"] > 100000
                st.ok("big_tokenize") if ok else st.err("big_tokenize", str(code))
            elif r < 0.7:
                code, data = post(port, "/v1/completions", over, timeout=120)
                expect_json(data)
                st.ok("big_413") if code == 413 else st.err("big_413", str(code))
            else:
                # Pipelined requests never read, then dropped.
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.setblocking(False)
                one = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
                block, sent, t0 = one * 4096, 0, time.time()
                while sent < 4_000_000 and time.time() - t0 < 2:
                    try:
                        sent += s.send(block)
                    except BlockingIOError:
                        time.sleep(0.02)
                    except OSError:
                        break
                s.close()
                st.ok("pipeline_unread")
        except Exception as e:  # noqa: BLE001 (counted)
            st.err("big", type(e).__name__)
        stop.wait(1.0)


def worker_idle(port, st, stop, rng):
    while not stop.is_set():
        socks = []
        try:
            for _ in range(20):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                      source_address=(f"127.0.0.{rng.randint(2, 9)}", 0)))
            for _ in range(6):
                for s in socks:
                    try:
                        s.send(b"G")
                    except OSError:
                        pass
                if stop.wait(0.5):
                    break
            st.ok("idle_batch")
        except OSError as e:
            st.err("idle", type(e).__name__)
        for s in socks:
            s.close()


def worker_probe(port, st, stop, rng):
    while not stop.is_set():
        t = time.time()
        try:
            code, data = post(port, "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "temperature": 0})
            dt = time.time() - t
            if code == 200:
                with st.mu:
                    st.trivial.append(dt)
                st.ok("probe")
            else:
                st.err("probe", str(code))
        except Exception as e:  # noqa: BLE001 (counted)
            st.err("probe", type(e).__name__)
        stop.wait(0.5)


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "host": platform.node()}


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return "unknown"


def report(args, st, t0, server_pid, warmup_s, final, exit_code=None):
    with st.mu:
        rss = list(st.rss)
        trivial = list(st.trivial)
        served = dict(st.served)
        errors = dict(st.errors)
    after = [m for t, m in rss if t >= warmup_s]
    flat = None
    if after:
        flat = {"min_mb": min(after), "max_mb": max(after),
                "spread_pct": 100.0 * (max(after) - min(after)) / min(after)}
    out = {
        "benchmark": "soak",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "machine": machine(),
        "commit": args.commit,
        "settings": {"bin": args.bin, "model": args.model, "duration_planned_s": args.duration,
                     "warmup_s": warmup_s, "server_flags": args.server_flags,
                     "threads": {"streams": 3, "completions": 2, "malformed": 1, "big": 1,
                                 "idle": 1, "probe": 1}},
        "duration_s": round(time.time() - t0, 1),
        "complete": final,
        "requests_served": served,
        "requests_served_total": sum(served.values()),
        "errors": errors,
        "errors_total": sum(errors.values()),
        "rss_mb": [[round(t, 1), round(m, 1)] for t, m in rss],
        "rss_after_warmup": flat,
        "trivial_latency_s": {"n": len(trivial), "p50": pct(trivial, 50), "p90": pct(trivial, 90),
                              "p99": pct(trivial, 99), "max": max(trivial) if trivial else None},
        "server_exit_code": exit_code,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default=None, help="commit of the binary (default: git HEAD now)")
    args = ap.parse_args()
    args.commit = args.commit or commit()
    args.server_flags = ["--api-key", KEY, "--open-path", "/health", "--header-timeout", "3",
                         "--max-connections", "256", "--max-connections-per-client", "64"]
    log = tempfile.NamedTemporaryFile("w+", prefix="soak-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([args.bin, "serve", "--host", "127.0.0.1", "--port", "0", "--model",
                             f"stories={args.model}", *args.server_flags],
                            stdout=subprocess.DEVNULL, stderr=log)
    port = None
    for _ in range(600):
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log.name).read())
        if m:
            port = int(m.group(1))
            break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if port is None:
        proc.kill()
        sys.exit("server did not start:\n" + open(log.name).read())
    st = Stats()
    stop = threading.Event()
    rng = random.Random(13)
    workers = ([worker_streams] * 3 + [worker_completions] * 2 + [worker_malformed, worker_big,
               worker_idle, worker_probe])
    threads = [threading.Thread(target=w, args=(port, st, stop, random.Random(rng.random())), daemon=True)
               for w in workers]
    t0 = time.time()
    for t in threads:
        t.start()
    warmup = min(args.warmup, args.duration / 3)
    last_report = t0
    try:
        while time.time() - t0 < args.duration:
            m = rss_mb(proc.pid)
            if m is not None:
                with st.mu:
                    st.rss.append((time.time() - t0, m))
            if proc.poll() is not None:
                st.err("server", f"exited {proc.returncode}")
                break
            if time.time() - last_report >= 60:
                report(args, st, t0, proc.pid, warmup, False)
                last_report = time.time()
            time.sleep(10)
    except KeyboardInterrupt:
        pass
    stop.set()
    for t in threads:
        t.join(150)
    exit_code = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = "killed"
    else:
        exit_code = proc.returncode
    out = report(args, st, t0, proc.pid, warmup, True, exit_code)
    print(json.dumps({k: out[k] for k in ("duration_s", "requests_served_total", "errors_total",
                                          "rss_after_warmup", "trivial_latency_s", "server_exit_code")}))
    os.unlink(log.name)


if __name__ == "__main__":
    main()
