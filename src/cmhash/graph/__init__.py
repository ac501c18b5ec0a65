"""Graphs over a dataset's items: exact cosine kNN and the encoding tree of structural entropy.

Pure numpy/scipy (no torch): HINT builds its cross-modal graph and encoding tree here once,
before training.
"""

from cmhash.graph.encoding_tree import EncodingTree, build_encoding_tree, structural_entropy
from cmhash.graph.knn import cosine_knn, cross_modal_graph

__all__ = [
    "EncodingTree",
    "build_encoding_tree",
    "structural_entropy",
    "cosine_knn",
    "cross_modal_graph",
]
