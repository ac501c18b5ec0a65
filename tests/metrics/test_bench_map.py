"""The mAP benchmark script runs end to end on a tiny problem (a smoke test; nothing is timed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_map.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_map", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_field_loop_with_a_stable_sort_is_the_protocol_map():
    from cmhash.metrics import mean_average_precision

    bench = load_bench()
    q, db, ql, dl = bench.make_problem(30, 400, 12, 5, seed=1)
    stable = bench.field_loop(q, db, ql, dl, kind="stable")
    np.testing.assert_allclose(stable, mean_average_precision(q, db, ql, dl).ap, rtol=0, atol=1e-12)


def test_bench_map_writes_its_table_as_json(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "bench.json"
    report = bench.main(["--queries", "40", "--database", "500", "--bits", "24", "--field-queries", "10",
                         "--numpy-queries", "20", "--repeat", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["params"]["queries"] == 40 and saved["machine"]["cpu_count"] >= 1
    methods = [row["method"] for row in saved["results"]]
    assert methods[0].startswith("field loop") and any("numpy backend" in m for m in methods)
    for row in saved["results"][1:]:
        assert row["max_abs_ap_diff_vs_stable"] < 1e-12
    assert "ratio_vs_field_loop" in saved["results"][-1]
    assert report["results"] == saved["results"]
    assert "vs field" in capsys.readouterr().out
    from cmhash.metrics.kernels import numba_available

    if numba_available():  # the lower bounds are timed beside the kernel, per thread setting
        bounds = [row["method"] for row in saved["lower_bounds"]]
        assert any(b.startswith("bound: distance histograms") for b in bounds)
        assert any(b.startswith("bound: scan floor") for b in bounds)
        assert saved["seconds_for_50x_field_loop"] == pytest.approx(saved["results"][0]["seconds"] / 50)


def test_scan_floor_sums_every_pair():
    from cmhash.metrics.kernels import numba_available

    if not numba_available():
        pytest.skip("numba not installed (extra 'fast')")
    from cmhash.codes import pack

    bench = load_bench()
    q, db, ql, dl = bench.make_problem(7, 90, 24, 5, seed=2)
    dist = (q[:, None, :] != db[None, :, :]).sum(axis=2)
    rel = (ql.astype(int) @ dl.T.astype(int)) > 0
    assert bench.scan_floor(pack(q), pack(db), ql, dl) == int(dist.sum() + rel.sum())


@pytest.mark.slow  # JIT-compiles the metrics kernel a second time (the revision's copy)
@pytest.mark.parametrize("kernel", ["rank", "histogram"])
def test_bench_map_kernel_compares_with_a_git_revision(kernel, tmp_path, capsys):
    from cmhash.metrics.kernels import numba_available

    repo = SCRIPT.parents[1]
    if not numba_available() or not (repo / ".git").exists():
        pytest.skip("needs numba and a git checkout")
    spec = importlib.util.spec_from_file_location("bench_map_kernel", SCRIPT.with_name("bench_map_kernel.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "kernel.json"
    report = module.main(["--against", "HEAD", "--kernel", kernel, "--queries", "6", "--database", "300",
                          "--repeat", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results_identical"] and [r["kernel"] for r in saved["results"]] == ["at HEAD", "working tree"]
    assert report["results"] == saved["results"]
    assert "vs HEAD" in capsys.readouterr().out
