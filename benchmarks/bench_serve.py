"""The search service under load: a real `cmhash serve` (uvicorn) on 127.0.0.1, 100,000 x 64-bit codes.

    PYTHONPATH=src python benchmarks/bench_serve.py                 # about 3 minutes
    PYTHONPATH=src python benchmarks/bench_serve.py --quick         # shorter phases, a smoke run
    PYTHONPATH=src python benchmarks/bench_serve.py --done-when-only   # ~2 min: the target phase x3

The server is a child process (`python -m cmhash serve --store ... --model ...`), its store filled
beforehand with 100,000 items of random 64-bit image codes. The client is an asyncio HTTP/1.1
keep-alive client in this process (one socket per connection, a few microseconds per request, so
the client's cost does not hide the server's). Phases, each bounded in requests and in seconds:

- in-process peer: the same k=10 code queries, one per call, through ``HammingIndex.search``
  (numba kernel) and through ``SearchService.search`` (validation + search, no HTTP);
- closed loop (saturation) at 1, 16, 64 and 200 connections: each connection sends its next request
  as soon as the last one is answered;
- open loop at a fixed offered rate (default 300 req/s over 200 connections): request i is due at
  t0 + i/rate on connection i mod 200 and its latency counts from that due time, so a stall is not
  hidden; code queries, feature queries (text features -> image codes), and mixes with 5% writes
  (new items, or upserts of existing ones);
- a heavy request stream (256 queries x k=1000 each) on 2 connections beside the open loop.

Reports throughput, p50/p99/max latency, errors, the server's peak resident memory (VmHWM) after each
phase, the bound of the server's own histogram (/metrics) under which 99% of a phase's requests
finished inside the app (time spent waiting for the CPU before the app sees a request is not in it),
the server's CPU time per request (user + system, all threads: a cost that the machine's load
does not inflate much, unlike wall-clock latency), the machine load (os.getloadavg) before and after, and HTTP throughput as a ratio to the
in-process peer. Prints a table and writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cmhash.codes import PackedCodes
from cmhash.index import HammingIndex
from cmhash.io import write_json
from cmhash.methods.cca_itq import LinearSignModel
from cmhash.record import versions
from cmhash.serve import SearchService
from cmhash.serve.store import Item, ItemStore

RESULTS = Path(__file__).resolve().parent / "results" / "bench_serve.json"
SRC = Path(__file__).resolve().parents[1] / "src"
KEY_W = "bench-write-key-0123456789"
KEY_R = "bench-read-key-0123456789"
DIMS = {"image": 512, "text": 300}
REQUEST_TIMEOUT = 30.0  # a request not answered in this time counts as an error


# --------------------------------------------------------------------- client
class Connection:
    """One keep-alive HTTP/1.1 connection; ``request`` returns (status, body)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", key: str = KEY_R) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        try:
            self.writer.write(head + body)
            header = await self.reader.readuntil(b"\r\n\r\n")
            status = int(header.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))
            data = await self.reader.readexactly(length)
            if re.search(rb"(?i)connection: *close", header):
                await self.close()
            return status, data
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
        self.reader = self.writer = None


def summarize(latencies: list[float], errors: int, seconds: float) -> dict:
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"requests": len(latencies) + errors, "ok": len(latencies), "errors": errors,
            "seconds": round(seconds, 3), "throughput_rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(lat.max()), 2)}


async def one(conn: Connection, req: tuple) -> bool:
    try:
        status, _ = await asyncio.wait_for(conn.request(*req), REQUEST_TIMEOUT)
        return status == 200
    except Exception:  # noqa: BLE001 - any failure is an error in the count
        return False


async def closed_loop(host: str, port: int, conns: int, make, count: int, seconds: float) -> dict:
    """``conns`` connections, each sending the next request when the last is answered."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def worker() -> None:
        nonlocal issued, errors
        conn = Connection(host, port)
        while issued < count and time.perf_counter() < deadline:
            i = issued
            issued += 1
            start = time.perf_counter()
            if await one(conn, make(i)):
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return {"mode": "closed", "connections": conns, **summarize(latencies, errors, time.perf_counter() - t0)}


async def open_loop(host: str, port: int, conns: int, rate: float, seconds: float, make, label: str = "") -> dict:
    """Request i due at t0 + i/rate on connection i % conns; latency counted from the due time."""
    n = int(rate * seconds)
    latencies: list[float] = []
    kinds: dict[str, list[float]] = {}
    late: list[float] = []
    errors = 0
    t0 = time.perf_counter() + 0.2

    async def worker(w: int) -> None:
        nonlocal errors
        conn = Connection(host, port)
        for i in range(w, n, conns):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
                late.append(time.perf_counter() - due)  # how late the client woke: its own lag
            req = make(i)
            if await one(conn, req):
                lat = time.perf_counter() - due
                latencies.append(lat)
                kinds.setdefault(req[1], []).append(lat)
            else:
                errors += 1
        await conn.close()

    await asyncio.gather(*(worker(w) for w in range(conns)))
    out = {"mode": "open", "label": label, "connections": conns, "offered_rps": rate,
           **summarize(latencies, errors, time.perf_counter() - t0)}
    # How late the client woke for requests it was on time for (its event loop's own lag, ~0 when it
    # gets the CPU): a high value means the benchmark process, not only the server, was kept waiting.
    out["client_late_p99_ms"] = round(float(np.percentile(np.array(late) * 1e3, 99)), 2) if late else None
    if len(kinds) > 1:
        out["by_path"] = {m: {"n": len(v), "p99_ms": round(float(np.percentile(np.array(v) * 1e3, 99)), 2)}
                            for m, v in kinds.items()}
    return out


# --------------------------------------------------------------------- server
async def server_histogram(host: str, port: int) -> dict[str, int]:
    """The server's own latency histogram (time inside the app), cumulative counts by bucket bound."""
    conn = Connection(host, port)
    _, text = await conn.request("GET", "/metrics")
    await conn.close()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(rb'cmhash_request_seconds_bucket\{le="([^"]+)"\} (\d+)', text)}


def server_p99_bound_ms(before: dict, after: dict) -> float | None:
    """The smallest histogram bound under which 99% of the phase's requests finished inside the server."""
    bounds = [b for b in after if b != b"+Inf"]
    total = after[b"+Inf"] - before.get(b"+Inf", 0)
    if total <= 0:
        return None
    for b in sorted(bounds, key=float):
        if after[b] - before.get(b, 0) >= 0.99 * total:
            return round(float(b) * 1e3, 1)
    return float("inf")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: round(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024, 1)  # noqa: E731
    return {"server_peak_rss_mb": get("VmHWM"), "server_rss_mb": get("VmRSS")}


def start_server(folder: Path, nbits: int) -> tuple[subprocess.Popen, str, int]:
    keys = folder / "keys.txt"
    keys.write_text(f"write {KEY_W}\nread {KEY_R}\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmhash", "serve", "--store", str(folder / "store.db"), "--model",
         str(folder / "model.npz"), "--api-keys", str(keys), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, "127.0.0.1", int(found.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the server did not start: {proc.stderr.read()[-2000:]}")


def in_process(codes: PackedCodes, queries: list[str], model, seconds: float, count: int) -> dict:
    """The same single k=10 queries through HammingIndex.search and through SearchService.search."""
    index = HammingIndex.from_codes(codes)
    qcodes = PackedCodes(np.array([bytearray.fromhex(q) for q in queries], dtype=np.uint8), codes.nbits)
    index.search(qcodes[:1], 10)  # compile
    out = {}
    for name, fn in [("hamming_index", lambda i: index.search(qcodes[i : i + 1], 10)),
                     ("search_service", lambda i, s=SearchService(model, index):
                      s.search({"codes": [queries[i]], "k": 10}))]:
        t0 = time.perf_counter()
        done = 0
        while done < count and time.perf_counter() - t0 < seconds:
            fn(done % len(queries))
            done += 1
        dt = time.perf_counter() - t0
        out[name] = {"queries": done, "seconds": round(dt, 3), "qps": round(done / dt, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--rate", type=float, default=300.0, help="offered requests/s of the open loops")
    parser.add_argument("--open-seconds", type=float, default=20.0, help="length of each open-loop phase")
    parser.add_argument("--closed-count", type=int, default=4000, help="requests per closed-loop level (at most)")
    parser.add_argument("--closed-seconds", type=float, default=10.0, help="seconds per closed-loop level (at most)")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before each phase")
    parser.add_argument("--quick", action="store_true", help="5 s phases: a smoke run")
    parser.add_argument("--done-when-only", action="store_true",
                        help="only the saturation levels 16/64 and the done-when open loop, three times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.done_when_only and args.out == str(RESULTS):
        args.out = str(RESULTS.with_name("bench_serve_done_when.json"))
    if args.quick:
        args.open_seconds, args.closed_seconds, args.closed_count = 5.0, 3.0, 1000
    load_before = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    nbytes = (args.bits + 7) // 8
    codes = PackedCodes(rng.integers(0, 256, size=(args.n, nbytes), dtype=np.uint8), args.bits)
    model = LinearSignModel(mean={m: np.zeros(d) for m, d in DIMS.items()},
                            proj={m: rng.standard_normal((d, args.bits)) for m, d in DIMS.items()},
                            bits=args.bits, hparams={})
    queries = [row.tobytes().hex() for row in rng.integers(0, 256, size=(1000, nbytes), dtype=np.uint8)]
    text = rng.standard_normal((200, DIMS["text"])).round(4)
    search_code = [("POST", "/search", json.dumps({"codes": [q], "target": "image", "k": 10}).encode()) for q in queries]
    search_feat = [("POST", "/search", json.dumps({"features": [t.tolist()], "modality": "text", "k": 10}).encode())
                   for t in text]
    heavy = ("POST", "/search", json.dumps({"codes": queries[:256], "target": "image", "k": 1000}).encode())

    def add(i: int) -> tuple:  # a new item, with a payload
        item = {"id": 10_000_000 + i, "image_code": queries[i % len(queries)], "payload": {"i": i}}
        return ("POST", "/items", json.dumps({"items": [item]}).encode(), KEY_W)

    def upsert(i: int) -> tuple:  # an existing item replaced (moves to the end of the ranking order)
        item = {"id": int(rng_ids[i % len(rng_ids)]), "image_code": queries[i % len(queries)], "payload": {"u": i}}
        return ("POST", "/items", json.dumps({"items": [item], "upsert": True}).encode(), KEY_W)

    rng_ids = rng.integers(0, args.n, size=4096)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        folder = Path(tmp)
        model.save(folder / "model.npz")
        t0 = time.perf_counter()
        store = ItemStore(folder / "store.db", args.bits)
        store.write([Item(i, {"image": codes.data[i].tobytes(), "text": None}, None) for i in range(args.n)],
                    upsert=False)
        store.close()
        fill_s = time.perf_counter() - t0
        peer = in_process(codes, queries, model, seconds=5.0, count=20_000)
        t0 = time.perf_counter()
        proc, host, port = start_server(folder, args.bits)
        startup_s = time.perf_counter() - t0
        try:
            def run(coro, phase: str) -> None:
                time.sleep(args.settle)  # let the previous phase's connections close and the server idle
                before = asyncio.run(server_histogram(host, port))
                cpu0 = cpu_seconds(proc.pid)
                result = asyncio.run(coro)
                cpu = cpu_seconds(proc.pid) - cpu0
                after = asyncio.run(server_histogram(host, port))
                result.update(phase=phase, **peak_rss_mb(proc.pid), load=os.getloadavg()[0],
                              server_p99_within_ms=server_p99_bound_ms(before, after),
                              server_cpu_ms_per_request=round(1e3 * cpu / max(1, result["requests"]), 3))
                rows.append(result)
                print(f"  {phase:<28} {result['throughput_rps']:>8} req/s  p99 {result['p99_ms']:>8} ms  "
                      f"errors {result['errors']}", flush=True)

            asyncio.run(closed_loop(host, port, 4, lambda i: search_code[i % 1000], 200, 5))  # warm up
            if args.done_when_only:
                for conns in (16, 64):
                    run(closed_loop(host, port, conns, lambda i: search_code[i % 1000], args.closed_count,
                                    args.closed_seconds), f"closed codes c={conns}")
                for rep in range(3):
                    run(open_loop(host, port, 200, args.rate, args.open_seconds, lambda i: search_code[i % 1000]),
                        "open codes" if rep == 0 else f"open codes (repeat {rep})")
            else:
                for conns in (1, 16, 64, 200):
                    run(closed_loop(host, port, conns, lambda i: search_code[i % 1000], args.closed_count,
                                    args.closed_seconds), f"closed codes c={conns}")
                for conns in (16, 64):
                    run(closed_loop(host, port, conns, lambda i: search_feat[i % 200], args.closed_count,
                                    args.closed_seconds), f"closed features c={conns}")
                run(open_loop(host, port, 200, args.rate, args.open_seconds, lambda i: search_code[i % 1000]),
                    "open codes")
                run(open_loop(host, port, 200, args.rate, args.open_seconds, lambda i: search_feat[i % 200]),
                    "open features")
                run(open_loop(host, port, 200, args.rate, args.open_seconds,
                              lambda i: add(i) if i % 20 == 19 else search_code[i % 1000]), "open codes + 5% adds")
                run(open_loop(host, port, 200, args.rate, args.open_seconds,
                              lambda i: upsert(i) if i % 20 == 19 else search_code[i % 1000]), "open codes + 5% upserts")

                async def beside_heavy() -> dict:
                    stop = time.perf_counter() + args.open_seconds
                    heavy_lat: list[float] = []
                    heavy_err = 0

                    async def heavy_worker() -> None:
                        nonlocal heavy_err
                        conn = Connection(host, port)
                        while time.perf_counter() < stop:
                            t = time.perf_counter()
                            if await one(conn, heavy):
                                heavy_lat.append(time.perf_counter() - t)
                            else:
                                heavy_err += 1
                        await conn.close()

                    small, *_ = await asyncio.gather(
                        open_loop(host, port, 200, args.rate, args.open_seconds, lambda i: search_code[i % 1000]),
                        heavy_worker(), heavy_worker())
                    small["heavy"] = summarize(heavy_lat, heavy_err, args.open_seconds)
                    return small

                run(beside_heavy(), "open codes beside heavy")
                print(f"  heavy (256 q x k=1000, 2 conns): {rows[-1]['heavy']}")
                run(open_loop(host, port, 200, args.rate, args.open_seconds, lambda i: search_code[i % 1000]),
                    "open codes (again, at end)")
        finally:
            proc.kill()
            proc.wait(10)
    load_after = os.getloadavg()

    best_http = max(r["throughput_rps"] for r in rows if r["mode"] == "closed" and "codes" in r["phase"])
    ratio = {name: round(best_http / v["qps"], 4) for name, v in peer.items()}
    header = (f"{'phase':<28} {'conns':>5} {'offered':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'errors':>6} {'peak MB':>8} {'client late p99':>15} {'in-server p99 <=':>16} {'CPU ms/req':>10}")
    print()
    print(f"cmhash serve: {args.n} x {args.bits}-bit codes, k=10; load before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} (1-min); store fill {fill_s:.1f} s, server start-up {startup_s:.1f} s")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['phase']:<28} {r['connections']:>5} {r.get('offered_rps', '-'):>8} {r['throughput_rps']:>8} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} {r['errors']:>6} {r['server_peak_rss_mb']:>8} "
              f"{r.get('client_late_p99_ms') if r.get('client_late_p99_ms') is not None else '-':>15} "
              f"{r['server_p99_within_ms']:>16} {r['server_cpu_ms_per_request']:>10}")
    print(f"in-process peer (1 query per call, k=10): " +
          ", ".join(f"{k} {v['qps']} q/s" for k, v in peer.items()))
    print(f"HTTP saturation {best_http} req/s = " + ", ".join(f"{v:.3f} x {k}" for k, v in ratio.items()))
    targets = [r for r in rows if r["phase"].startswith("open codes") and "+" not in r["phase"]
               and "beside" not in r["phase"]]
    met = [r["errors"] == 0 and r["p99_ms"] < 50 for r in targets]
    ok = all(met)
    print(f"done-when (200 conns, {args.rate:.0f} req/s offered, open loop, k=10 codes): met in {sum(met)} of "
          f"{len(met)} runs (" + ", ".join(f"errors {r['errors']} p99 {r['p99_ms']} ms" for r in targets) + ")")
    write_json(args.out, {
        "benchmark": "bench_serve", "n": args.n, "bits": args.bits, "k": 10, "rate": args.rate,
        "open_seconds": args.open_seconds, "settle_seconds": args.settle, "closed_count": args.closed_count, "closed_seconds": args.closed_seconds,
        "seed": args.seed, "cpu_count": os.cpu_count(), "load_before": load_before, "load_after": load_after,
        "store_fill_seconds": round(fill_s, 2), "server_startup_seconds": round(startup_s, 2),
        "in_process": peer, "http_saturation_rps": best_http, "http_over_in_process": ratio,
        "done_when_met": ok, "done_when_met_runs": f"{sum(met)} of {len(met)}", "phases": rows, "versions": versions(),
        "command": "PYTHONPATH=src python " + " ".join(sys.argv),
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
