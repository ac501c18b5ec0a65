"""Exact Hamming search over binary codes: :class:`HammingIndex` (persisted, numpy or numba kernels)."""

from cmhash.index.hamming import FORMAT, FORMAT_VERSION, HammingIndex

__all__ = ["HammingIndex", "FORMAT", "FORMAT_VERSION"]
