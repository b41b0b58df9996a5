"""A small OpenAI-compatible mock server (Python stdlib only) for quiver-bench's end-to-end tests.

It streams one word per SSE chunk with a fixed delay, reports usage when asked
(stream_options.include_usage), serves byte-level /tokenize and /detokenize (id = byte + 3, BOS 1),
and can fail chosen requests: `fail_every=K` makes request numbers 1, 1+K, 1+2K... answer HTTP 500
and numbers 3, 3+K... drop the connection in the middle of their stream; `hang_every=H` makes
numbers H, 2H... never answer (for 30 s). `plain_json` ignores "stream" and answers one JSON
object; `no_usage` never sends usage (as servers without stream_options do); `chaos` answers
every request with some broken output (see _chaos); `api_key` answers 401 without
"Authorization: Bearer <api_key>". Every completion it sends
is logged in `server.log` as (request number, outcome, completion tokens).
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _chaos(self, num, chat):
        """Broken answers, by request number mod 4: malformed JSON in the stream, an absurd usage
        number (ignored, so the answer still counts), bytes that are not HTTP, an SSE error event."""
        kind = num % 4
        self.server.log.append((num, "chaos%d" % kind, 0))
        if kind == 2:
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        word = {"index": 0, "delta": {"content": " x"}} if chat else {"index": 0, "text": " x"}
        if kind == 0:
            self._chunk(b"data: {\"choices\": [{\"text\": \"oops\"\n\n")
        elif kind == 1:
            self._chunk(b"data: " + json.dumps({"choices": [word]}).encode() + b"\n\n")
            self._chunk(b'data: {"choices": [], "usage": {"prompt_tokens": 1e300, "completion_tokens": 1e300}}\n\n')
        else:
            self._chunk(b'event: error\ndata: {"message": "overloaded"}\n\n')
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _authorized(self):
        key = self.server.api_key
        if key and self.headers.get("Authorization") != "Bearer " + key:
            self._json(401, {"error": {"message": "bad api key"}})
            return False
        return True

    def do_GET(self):
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "mock-model", "object": "model"}]})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if not self._authorized():
            return
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "bad json"}})
            return
        srv = self.server
        if self.path == "/tokenize":
            ids = [b + 3 for b in req.get("prompt", "").encode()]
            if req.get("add_special_tokens", True):
                ids = [1] + ids
            self._json(200, {"tokens": ids, "count": len(ids)})
            return
        if self.path == "/detokenize":
            data = bytes(t - 3 for t in req.get("tokens", []) if 3 <= t < 259)
            self._json(200, {"prompt": data.decode("utf-8", "replace")})
            return
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        with srv.lock:
            srv.count += 1
            num = srv.count
        chat = self.path.endswith("chat/completions")
        prompt = req.get("prompt") if not chat else req["messages"][-1]["content"]
        n_prompt = len(prompt.encode()) + 1
        max_tokens = int(req.get("max_tokens", 16))
        if srv.chaos:
            self._chaos(num, chat)
            return
        if srv.hang_every and num % srv.hang_every == 0:
            srv.log.append((num, "hung", 0))
            time.sleep(30)
            return
        k = srv.fail_every
        if k and num % k == 1 % k:
            srv.log.append((num, "http500", 0))
            self._json(500, {"error": {"message": "mock failure %d" % num, "type": "server_error"}})
            return
        if srv.plain_json:
            text = "".join(" w%d" % i for i in range(max_tokens))
            choice = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            usage = {"prompt_tokens": n_prompt, "completion_tokens": max_tokens, "total_tokens": n_prompt + max_tokens}
            time.sleep(srv.ttft)
            self._json(200, {"choices": [choice], "usage": usage})
            srv.log.append((num, "ok", max_tokens))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        drop = k and num % k == 3 % k
        if chat:
            self._chunk(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
        time.sleep(srv.ttft)
        for i in range(max_tokens):
            if drop and i == max_tokens // 2:
                srv.log.append((num, "dropped", i))
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            word = " w%d" % i
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            choice["finish_reason"] = "length" if i == max_tokens - 1 else None
            self._chunk(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            time.sleep(srv.itl)
        if (req.get("stream_options") or {}).get("include_usage") and not srv.no_usage:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": max_tokens,
                     "total_tokens": n_prompt + max_tokens}
            self._chunk(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")
        srv.log.append((num, "ok", max_tokens))


def start(fail_every=0, ttft=0.01, itl=0.002, hang_every=0, plain_json=False, no_usage=False, chaos=False,
          api_key=None):
    """Starts the mock on a free 127.0.0.1 port in a thread; returns the server (stop with shutdown())."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.count = 0
    srv.log = []
    srv.fail_every = fail_every
    srv.hang_every = hang_every
    srv.plain_json = plain_json
    srv.no_usage = no_usage
    srv.chaos = chaos
    srv.api_key = api_key
    srv.ttft = ttft
    srv.itl = itl
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
