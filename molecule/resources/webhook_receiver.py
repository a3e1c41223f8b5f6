#!/usr/bin/env python3
"""A test webhook receiver: appends every POSTed JSON body to a file, one line each,
with the time it arrived (seconds since the epoch).

    webhook_receiver.py ADDRESS PORT FILE

The tests point Alertmanager's webhook receiver at it and read FILE to see which
notifications arrived (the autoscaler will receive the same payloads).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    address, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                record = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            with out.open("a") as f:
                f.write(json.dumps({"received": time.time(), "path": self.path, "body": record}) + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer((address, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
