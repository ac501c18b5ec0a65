"""Helpers for the service tests: real `cmhash serve` processes on 127.0.0.1 (a free port chosen by the OS), stopped by pid."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from cmhash.methods.cca_itq import LinearSignModel

SRC = Path(__file__).resolve().parents[2] / "src"
START_TIMEOUT = 60  # seconds for a server to print its address (imports + index rebuild)
WRITE_KEY = "write-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"


def linear_model(dims, bits, seed=0):
    """A CCA-ITQ-shaped model with random projections: real encode/save/load, no training time."""
    rng = np.random.default_rng(seed)
    return LinearSignModel(
        mean={m: np.zeros(d) for m, d in dims.items()},
        proj={m: rng.standard_normal((d, bits)) for m, d in dims.items()},
        bits=bits, hparams={},
    )


class Server:
    """A `cmhash serve` child process; ``url`` once it listens; ``stop()`` kills it by pid."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        full_env.pop("CMHASH_API_KEYS", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cmhash", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.url = self._wait_for_url()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            if found:
                return found.group(0)
        self.stop()
        raise RuntimeError(f"the server did not start: {''.join(self.stderr)[-2000:]}")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@contextmanager
def running(args: list[str], env: dict[str, str] | None = None):
    server = Server(args, env)
    try:
        yield server
    finally:
        server.stop()


def write_keys(path: Path) -> Path:
    path.write_text(f"# test keys\nwrite {WRITE_KEY}\nread {READ_KEY}\n")
    return path


def lite_servers(folder: Path) -> list[int]:
    """Pids of Milvus Lite servers running on a file in ``folder`` (whoever their parent is now:
    a killed service's server is reparented and stops by itself once it sees its lock released)."""
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmd.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"milvus") and any(str(folder).encode() in a for a in args):
            pids.append(int(cmd.parent.name))
    return pids


def wait_gone(folder: Path, seconds: float = 15) -> list[int]:
    """The Milvus Lite servers on ``folder`` still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while lite_servers(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    return lite_servers(folder)


def need_backend(backend: str) -> None:
    """Skip a --backend milvus test without the milvus extra; under CI=true (which installs it) fail."""
    if backend != "milvus":
        return
    if os.environ.get("CI", "").lower() == "true":
        import milvus_lite  # noqa: F401
    pytest.importorskip("milvus_lite", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")
