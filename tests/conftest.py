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


@pytest.fixture(scope="session")
def wiki_path() -> Path:
    """Path of wikiData.mat; skip with a reason in a user's clone, fail in CI (CI=true)."""
    root = data_root()
    path = root / "wiki" / "wikiData.mat" if root else None
    if path is None or not path.is_file():
        reason = (
            "WIKI benchmark file not found: set CMHASH_DATA to the folder holding wiki/wikiData.mat "
            "(or place it at ../shared/data/wiki/wikiData.mat beside the repo)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + reason)
        pytest.skip(reason)
    return path


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
