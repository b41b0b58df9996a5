"""What TLS costs in `quiver serve`: the same requests over plain HTTP and over HTTPS (a
self-signed P-256 certificate made here with the openssl CLI), against one server each:
  - keep-alive: N one-token completions in a row over one connection (per-request latency),
  - new connection: M one-token completions, each on a fresh connection (handshake included),
  - stream: one streamed completion of T tokens (generated tokens per second).
Medians of each; results as JSON (machine, commit, settings, numbers).

Usage: python bench/serve/tls.py QUIVER_BIN [MODEL_DIR] [--out FILE] [--n 200] [--m 50] [--tokens 256]
Needs only the Python standard library and the openssl CLI."""
import argparse
import http.client
import json
import os
import platform
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time


def start(bin_, args):
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    p = subprocess.Popen([bin_, "serve", "--port", "0", "--disable-log-requests", *args],
                         stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(1200):
        m = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", open(log.name).read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    sys.exit("server did not start:\n" + open(log.name).read())


def conn(port, ctx):
    if ctx:
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def post(c, model, max_tokens, stream=False):
    req = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0,
           "ignore_eos": True, "stream": stream}
    if stream:
        req["stream_options"] = {"include_usage": True}
    body = json.dumps(req)
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, data
    return data


def measure(port, ctx, model, n, m, tokens):
    c = conn(port, ctx)
    post(c, model, 1)  # warm-up
    keep = []
    for _ in range(n):
        t0 = time.perf_counter()
        post(c, model, 1)
        keep.append(time.perf_counter() - t0)
    c.close()
    fresh = []
    for _ in range(m):
        t0 = time.perf_counter()
        c = conn(port, ctx)
        post(c, model, 1)
        c.close()
        fresh.append(time.perf_counter() - t0)
    c = conn(port, ctx)
    t0 = time.perf_counter()
    data = post(c, model, tokens, stream=True)
    dt = time.perf_counter() - t0
    c.close()
    assert f'"completion_tokens":{tokens}'.encode() in data.replace(b" ", b""), data[-300:]
    return {"keepalive_request_ms_median": statistics.median(keep) * 1e3,
            "new_connection_request_ms_median": statistics.median(fresh) * 1e3,
            "stream_tokens_per_s": tokens / dt}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("model", nargs="?", default="quiver-tiny")
    ap.add_argument("--out")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{d}/k.pem", "-out", f"{d}/c.pem", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=f"{d}/c.pem")
    model_args = ["--model", f"m={a.model}"]
    res = {}
    for name, extra, c in (("http", [], None), ("https", ["--ssl-certfile", f"{d}/c.pem", "--ssl-keyfile", f"{d}/k.pem"], ctx)):
        p, port = start(a.bin, model_args + extra)
        try:
            res[name] = measure(port, c, "m", a.n, a.m, a.tokens)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"bench": "serve-tls-overhead", "machine": {"node": platform.node(), "cpu": platform.processor() or platform.machine(),
                                                      "cores": os.cpu_count()},
           "commit": commit, "binary": a.bin, "model": a.model,
           "settings": {"keepalive_requests": a.n, "new_connection_requests": a.m, "stream_tokens": a.tokens,
                        "certificate": "self-signed P-256", "client": "python http.client + ssl"},
           "results": res}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
