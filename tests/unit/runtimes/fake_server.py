"""A stand-in for the serving image's server, run by the local runtime's tests as a real process: TF
Serving's model status route only, reporting the version it was started with AVAILABLE (FAKE_SERVER=fail:
exits at once, as a server whose port is taken would)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--model_name", "--model_base_path", "--model_version", "--rest_api_port", "--host"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    if os.environ.get("FAKE_SERVER") == "fail":
        print(f"port {args.rest_api_port} in use", flush=True)
        return 4

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = [{"version": args.model_version, "state": "AVAILABLE"}]
            body = json.dumps({"model_version_status": status}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    print(f"serving {args.model_name} v{args.model_version}", flush=True)
    ThreadingHTTPServer((args.host, int(args.rest_api_port)), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
