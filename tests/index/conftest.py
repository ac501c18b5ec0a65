"""Fixtures of the index tests: finding the Milvus Lite server processes a test started."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest


def milvus_child_pids() -> set[int]:
    """Pids of this process's children named milvus (the Milvus Lite server)."""
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
    """The function listing this process's Milvus Lite server pids."""
    return milvus_child_pids
