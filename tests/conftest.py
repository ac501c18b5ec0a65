"""Shared fixtures. Benchmark data is read from CMHASH_DATA or ../shared/data, never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    env = os.environ.get("CMHASH_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


def shared_data_file(relative: str, what: str) -> Path:
    """Path of a shared benchmark file; skip with a reason in a user's clone, fail in CI (CI=true)."""
    root = data_root()
    path = root / relative if root else None
    if path is None or not path.is_file():
        reason = (
            f"{what} benchmark file not found: set CMHASH_DATA to the folder holding {relative} "
            f"(or place it at ../shared/data/{relative} beside the repo)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def wiki_path() -> Path:
    """Path of wikiData.mat (WIKI)."""
    return shared_data_file("wiki/wikiData.mat", "WIKI")


@pytest.fixture(scope="session")
def wiki_roph_path() -> Path:
    """Path of wiki-roph/wiki.mat (WIKI with RoPH's features)."""
    return shared_data_file("wiki-roph/wiki.mat", "WIKI-RoPH")


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """Test modules that use torch run it on one intra-op thread: the tensors are tiny, one
    thread is faster (several times so on a loaded 2-core machine) and results repeat exactly."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def milvus_child_pids() -> set[int]:
    """Pids of this process's children named milvus (the Milvus Lite server of a MilvusIndex)."""
    import glob

    me, found = os.getpid(), set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == me and "milvus" in comm:
            found.add(int(stat.split("/")[2]))
    return found


@pytest.fixture(scope="session")
def milvus_children():
    """The function listing this process's Milvus Lite server pids (tests check none is left)."""
    return milvus_child_pids
