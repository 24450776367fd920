"""A stand-in controller process for `cluster up` tests: serves /healthz and /api/cluster from a node.json.

Run as ``python fake_controller.py controller run --config PATH`` (the same argv shape as the real
one, so `cluster up`'s liveness check by command line applies).
"""

from __future__ import annotations

import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    with open(sys.argv[sys.argv.index("--config") + 1]) as f:
        config = json.load(f)
    print(json.dumps({"event": "fake_controller_serving", "node_id": config["node_id"]}), flush=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, doc: object) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                self._send(200, {"ok": True, "node": config["node_id"]})
                return
            token = self.headers.get("Authorization", "")[len("Bearer "):]
            if hashlib.sha256(token.encode()).hexdigest() != config["admin_token_hash"]:
                self._send(401, {"error": {"code": "unauthorized", "message": "invalid token", "field": None}})
                return
            if self.path == "/api/cluster":
                me = {"id": config["node_id"], "api": f"http://{config['api_host']}:{config['api_port']}",
                      "role": "leader" if config["node_id"] == "n1" else "follower", "term": 1, "commit_index": 1,
                      "applied_revision": 1}
                peers = [{"id": p["node_id"], "api": p["api_url"], "role": "follower" if p["node_id"] != "n1" else "leader",
                          "term": 1, "commit_index": 1, "applied_revision": 1} for p in config["peers"]]
                self._send(200, {"leader": "n1", "state": "CLUSTER_UP_NO_HA", "nodes": sorted([me, *peers], key=lambda n: n["id"])})
                return
            self._send(404, {"error": {"code": "not_found", "message": "no route", "field": None}})

    HTTPServer((config["api_host"], config["api_port"]), Handler).serve_forever()


if __name__ == "__main__":
    main()
