"""Benchmark 3: single-image `:predict` latency and throughput of the serving process, from a load
generator on loopback (keep-alive HTTP/1.1 connections, one per client thread), at concurrency 1 and 8.

Run: python -m benchmarks.serving_latency [--repeats 3] [--requests 2000] [--seconds 5]"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlsplit

from benchmarks._common import Figure, check_repeats, dataset_dir, parser, report
from benchmarks._serving import MODEL, ensure_model, serving


def _body(image: list[list[int]]) -> bytes:
    return json.dumps({"instances": [image]}, separators=(",", ":")).encode()


class Client:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        self.path = f"/v1/models/{MODEL}:predict"

    def predict(self, body: bytes) -> float:
        started = time.perf_counter()
        self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        payload = resp.read()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"POST {self.path}: HTTP {resp.status} {payload[:200]!r}")
        return elapsed


def sequential(url: str, bodies: list[bytes], n: int) -> list[float]:
    client = Client(url)
    for body in bodies[:50]:  # warm-up
        client.predict(body)
    return [client.predict(bodies[i % len(bodies)]) for i in range(n)]


def concurrent(url: str, bodies: list[bytes], threads: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(k: int) -> None:
        client = Client(url)
        client.predict(bodies[k])
        start.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            latencies[k].append(client.predict(bodies[i % len(bodies)]))
            i += threads

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    return len(flat) / elapsed, flat


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__ or "")
    p.add_argument("--requests", type=int, default=2000, help="requests per run at concurrency 1")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per run at concurrency 8")
    args = p.parse_args(argv)
    repeats = check_repeats(args.repeats)
    from airflow_provider_mlpipe.datasets.fashion_mnist import load_fashion_mnist

    data = load_fashion_mnist(str(dataset_dir()), 1, None)
    bodies = [_body(img) for img in data.x_test[:500].tolist()]
    store = ensure_model()
    p50: list[float] = []
    p99: list[float] = []
    rps1: list[float] = []
    rps8: list[float] = []
    p50_8: list[float] = []
    p99_8: list[float] = []
    with serving(store) as url:
        for _ in range(repeats):
            began = time.perf_counter()
            lat = sequential(url, bodies, args.requests)
            rps1.append(len(lat) / (time.perf_counter() - began))
            p50.append(pct(lat, 50))
            p99.append(pct(lat, 99))
            rate, lat8 = concurrent(url, bodies, 8, args.seconds)
            rps8.append(rate)
            p50_8.append(pct(lat8, 50))
            p99_8.append(pct(lat8, 99))
    figures = [
        Figure(
            "p50 latency, concurrency 1", "ms", p50, anchor=2.71, anchor_label="(before)", target=("<=", 3.0)
        ),
        Figure(
            "p99 latency, concurrency 1", "ms", p99, anchor=5.17, anchor_label="(before)", target=("<=", 10.0)
        ),
        Figure("requests/s, concurrency 1", "req/s", rps1),
        Figure("requests/s, concurrency 8", "req/s", rps8),
        Figure("p50 latency, concurrency 8", "ms", p50_8),
        Figure("p99 latency, concurrency 8", "ms", p99_8),
    ]
    report(
        "serving_latency",
        "Serving: single-image :predict on loopback",
        figures,
        command=(
            f"python -m benchmarks.serving_latency --repeats {repeats} --requests {args.requests} "
            f"--seconds {args.seconds:g}"
        ),
        details={"requests_per_run_c1": args.requests, "seconds_per_run_c8": args.seconds},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
