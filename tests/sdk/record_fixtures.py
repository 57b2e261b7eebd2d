"""Records what the real SDKs send, as fixtures for sluice's fast replay tests.

usage: python record_fixtures.py OUT_DIR
Starts a recording server, points each SDK at it (python_client.py in its three modes,
node_client.cjs, browser.cjs), and writes one JSON file per request: method, path, query,
the headers that matter, and the body in base64. Needs the SDKs installed as tests/run.sh
installs them (PYTHONPATH and NODE_PATH set).
"""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
KEPT_HEADERS = ("content-type", "content-encoding", "authorization", "posthog-sdk-info", "posthog-request-timestamp")
TOKEN = "phc_fixture"
current = {"client": "none", "count": 0}


class Recorder(BaseHTTPRequestHandler):
    def _record(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        if url.path.startswith(("/flags", "/decide", "/array", "/static")):
            self._answer(200, b"{}")
            return
        current["count"] += 1
        name = f"{current['client']}-{current['count']:02d}.json"
        fixture = {
            "client": current["client"],
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k: v for k, v in self.headers.items() if k.lower() in KEPT_HEADERS},
            "body_base64": base64.b64encode(body).decode(),
        }
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(fixture, f, indent=2)
        answer = b'{"results":{}}' if url.path.startswith("/i/v1/") else b'{"status":1}'
        self._answer(200, answer)

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("access-control-allow-origin", self.headers.get("origin") or "*")
        self.send_header("access-control-allow-credentials", "true")
        self.send_header("access-control-allow-headers", self.headers.get("access-control-request-headers") or "*")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = _record

    def do_OPTIONS(self):
        self._answer(200, b'{"status":1}')

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
threading.Thread(target=server.serve_forever, daemon=True).start()
host = f"http://127.0.0.1:{server.server_address[1]}"
here = os.path.dirname(os.path.abspath(__file__))
runs = [
    ("python-default", [sys.executable, f"{here}/python_client.py", host, TOKEN, "default"]),
    ("python-gzip", [sys.executable, f"{here}/python_client.py", host, TOKEN, "gzip"]),
    ("python-v1", [sys.executable, f"{here}/python_client.py", host, TOKEN, "v1"]),
    ("node", ["node", f"{here}/node_client.cjs", host, TOKEN]),
    ("browser", ["node", f"{here}/browser.cjs", host, TOKEN]),
]
for client, command in runs:
    current["client"], current["count"] = client, 0
    subprocess.run(command, check=True, timeout=120)
server.shutdown()
print(f"fixtures written to {out_dir}")
