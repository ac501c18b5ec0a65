"""The first hour of a new user (issue 15): progress while training, one-line errors instead of
tracebacks, `--version`, `cmhash datasets` at 80 columns, `index build` on synthetic data."""

from __future__ import annotations

import os
import sys

import pytest
from typer.testing import CliRunner

import cmhash
import cmhash.cli
from cmhash.cli import app

runner = CliRunner()


@pytest.fixture
def width(monkeypatch):
    def set_width(columns):
        monkeypatch.setattr(cmhash.cli.console, "width", columns)
    set_width(400)
    return set_width


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output  # one line (the console is 400 wide here: nothing wraps)
    assert res.output.rstrip().endswith(errors[0].rstrip()), res.output  # and it is the last word
    for needle in needles:
        assert needle in errors[0], res.output


def test_version(width):
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"cmhash {cmhash.__version__}"


@pytest.mark.parametrize("args, needles", [
    (["--seed", "-1"], ["--seed must be >= 0", "-1"]),
    (["--split-seed", "-2"], ["--split-seed must be >= 0"]),
    (["--bits", "0"], ["--bits must be a positive integer, got 0"]),
    (["--bits", "1000000"], ["1000000 bits cannot be learned from 270 training items"]),
])
def test_train_argument_errors_are_one_line(args, needles, width, tmp_path):
    res = invoke("train", "cca-itq", "--dataset", "synthetic:300", "--out", tmp_path / "run", *args)
    one_line_error(res, *needles)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_refused_before_training(width, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        res = invoke("train", "cca-itq", "--dataset", "synthetic:300", "--out", locked / "run")
        one_line_error(res, "--out", "cannot write there")
    finally:
        locked.chmod(0o700)


def test_out_that_is_a_file_is_refused_before_training(width, tmp_path):
    """Works as root too: a path under a regular file can never be a folder."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = invoke("train", "cca-itq", "--dataset", "synthetic:300", "--out", blocker / "run")
    one_line_error(res, "--out", "cannot write there")


def test_serve_port_out_of_range_is_one_line(width, tmp_path):
    res = invoke("serve", "--model", tmp_path / "m.npz", "--index", tmp_path / "i.npz", "--port", "99999")
    one_line_error(res, "--port must be in 0..65535", "99999")


def test_train_logs_each_iteration_with_verbose_and_is_quiet_without(width, tmp_path):
    args = ["train", "dcgh", "--dataset", "synthetic:300", "--bits", "8", "--param", "n_anchors=40",
            "--param", "max_iter=3"]
    quiet = invoke(*args, "--out", tmp_path / "a")
    assert quiet.exit_code == 0, quiet.output
    assert "iter 1" not in quiet.output
    res = invoke(*args, "--out", tmp_path / "b", "--verbose")
    assert res.exit_code == 0, res.output
    for it in (1, 2, 3):
        assert f"iter {it} objective=" in res.output
    assert "dcgh 8 bits: 3 steps" in res.output


def test_train_shows_progress_in_a_terminal(width, tmp_path, monkeypatch):
    from cmhash.progress import ConsoleProgress

    monkeypatch.setattr(type(cmhash.cli.console), "is_terminal", property(lambda self: True))
    assert isinstance(cmhash.cli._train_progress(verbose=False), ConsoleProgress)
    seen = []
    monkeypatch.setattr(ConsoleProgress, "log", lambda self, message="", **m: seen.append(message))
    res = invoke("train", "dcgh", "--dataset", "synthetic:300", "--bits", "8", "--param", "n_anchors=40",
                 "--param", "max_iter=2", "--out", tmp_path / "t")
    assert res.exit_code == 0, res.output
    assert seen == ["iter 1", "iter 2"]


def test_index_build_takes_synthetic_data(width, tmp_path):
    from cmhash.index import HammingIndex

    res = invoke("train", "cca-itq", "--dataset", "synthetic:300", "--bits", "16", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    res = invoke("index", "build", tmp_path / "run", "--dataset", "synthetic:300", "--out", tmp_path / "idx.npz")
    assert res.exit_code == 0, res.output
    index = HammingIndex.load(tmp_path / "idx.npz")
    assert len(index) == 270 and index.nbits == 16
    res = invoke("index", "build", tmp_path / "run", "--dataset", "synthetic:abc", "--out", tmp_path / "x.npz")
    one_line_error(res, "synthetic:N needs an integer N")


def test_datasets_is_readable_at_80_columns(width, tmp_path, monkeypatch):
    from cmhash.data.protocols import BENCHMARKS

    monkeypatch.setenv("CMHASH_DATA", str(tmp_path))  # nothing found: every file looked for is listed
    width(80)
    res = invoke("datasets")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if str(tmp_path) not in line]  # the user's path
    assert max(len(line) for line in lines) <= 80
    words = set(res.output.split())
    for bench in BENCHMARKS.values():  # every name and every file name whole (none cut by wrapping)
        assert bench.name in words
        for candidate in bench.files:
            for name in candidate:
                assert name in words or any(w.endswith("/" + name) for w in words), name
