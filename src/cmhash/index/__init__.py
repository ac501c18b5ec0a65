"""Hamming search over binary codes behind one interface, :class:`Index`: :class:`HammingIndex`
(exact, in memory, persisted; numpy or numba kernels) and ``cmhash.index.milvus.MilvusIndex``
(a Milvus collection; the ``milvus`` extra)."""

from cmhash.index.base import Index
from cmhash.index.hamming import FORMAT, FORMAT_VERSION, HammingIndex

__all__ = ["Index", "HammingIndex", "FORMAT", "FORMAT_VERSION"]
