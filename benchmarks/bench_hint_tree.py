"""HINT's encoding tree: build time against the number of pairs N (graph of 2N nodes).

For each N: exact cosine kNN graph (k = 3 per modality, plus the N pairs), then the greedy
structural-entropy tree of height 2 and 3. The peer is networkx's CNM modularity agglomeration
(``greedy_modularity_communities``: the same heap-based greedy merging, for another objective)
on the same graph, where networkx is installed; the ratio is tree(height 2) / CNM.

    PYTHONPATH=src python benchmarks/bench_hint_tree.py [--sizes 1000 2000 5000 10000 20000]

Data: cmhash.data.synthetic.make_synthetic (image 128-d, text 64-d), seed 0. Writes
benchmarks/results/bench_hint_tree.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cmhash.data.synthetic import make_synthetic
from cmhash.graph import build_encoding_tree, cross_modal_graph
from cmhash.io import write_json
from cmhash.record import versions

RESULTS = Path(__file__).resolve().parent / "results" / "bench_hint_tree.json"


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process: all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start, time.process_time() - cpu


def cnm_time(adj, limit_nodes: int) -> float | None:
    try:
        import networkx as nx
    except ImportError:
        return None
    if adj.shape[0] > limit_nodes:
        return None
    graph = nx.from_scipy_sparse_array(adj)
    _, seconds, _ = timed(nx.community.greedy_modularity_communities, graph, weight="weight")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000])
    parser.add_argument("--peer-max-nodes", type=int, default=4000,
                        help="run the networkx CNM peer only up to this many graph nodes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    header = (f"{'pairs':>7} {'nodes':>7} {'edges':>8} {'kNN wall':>8} {'kNN cpu':>8} "
              f"{'h2 wall':>8} {'h2 cpu':>7} {'h3 wall':>8} {'h3 cpu':>7} {'total h3':>8} "
              f"{'comms':>6} {'CNM s':>7} {'h2/CNM':>6}")
    print(header)
    for n in args.sizes:
        data = make_synthetic(n + 10, seed=0)
        image, text = data.image[:n], data.text[:n]
        adj, g_wall, g_cpu = timed(cross_modal_graph, image, text, k=3)
        tree2, h2_wall, h2_cpu = timed(build_encoding_tree, adj, height=2)
        tree3, h3_wall, h3_cpu = timed(build_encoding_tree, adj, height=3)
        t_cnm = cnm_time(adj, args.peer_max_nodes)
        row = {
            "pairs": n, "nodes": 2 * n, "edges": int(adj.nnz // 2),
            "knn_graph_wall_s": round(g_wall, 3), "knn_graph_cpu_s": round(g_cpu, 3),
            "tree_h2_wall_s": round(h2_wall, 3), "tree_h2_cpu_s": round(h2_cpu, 3),
            "tree_h3_wall_s": round(h3_wall, 3), "tree_h3_cpu_s": round(h3_cpu, 3),
            "total_h3_wall_s": round(g_wall + h3_wall, 3),
            "communities_level1": int(len(np.unique(tree3.ancestors(1)))),
            "entropy_h2": tree2.entropy, "entropy_h3": tree3.entropy,
            "cnm_wall_s": None if t_cnm is None else round(t_cnm, 3),
            "ratio_h2_over_cnm": None if t_cnm is None else round(h2_wall / t_cnm, 4),
        }
        rows.append(row)
        cnm = "-" if t_cnm is None else f"{t_cnm:7.2f}"
        ratio = "-" if t_cnm is None else f"{h2_wall / t_cnm:6.3f}"
        print(f"{n:>7} {2 * n:>7} {row['edges']:>8} {g_wall:>8.2f} {g_cpu:>8.2f} {h2_wall:>8.2f} "
              f"{h2_cpu:>7.2f} {h3_wall:>8.2f} {h3_cpu:>7.2f} {g_wall + h3_wall:>8.2f} "
              f"{row['communities_level1']:>6} {cnm:>7} {ratio:>6}", flush=True)
    # Growth: tree CPU time per node relative to the smallest size (1.0 = linear).
    base = rows[0]
    for row in rows:
        row["tree_h3_cpu_per_node_vs_smallest"] = round(
            (row["tree_h3_cpu_s"] / row["nodes"]) / (base["tree_h3_cpu_s"] / base["nodes"]), 3)
    print("tree h3 CPU time per node, relative to the smallest size (1.0 = linear):",
          ", ".join(f"{r['pairs']}: {r['tree_h3_cpu_per_node_vs_smallest']}" for r in rows))
    write_json(args.out, {
        "benchmark": "bench_hint_tree", "data": "make_synthetic(seed=0), image 128-d, text 64-d",
        "k": 3, "weighted": False, "rows": rows, "versions": versions(),
        "note": "shared 2-core machine: wall-clock is noisy under load; CPU = process time, all threads",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
