import json

import numpy as np
import pytest

from cmhash.io import atomic_write, load_arrays, save_arrays, write_json


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"a": np.arange(5), "b": np.eye(3, dtype=np.float32)}, {"k": [1, 2], "s": "x"})
    arrays, meta = load_arrays(path)
    np.testing.assert_array_equal(arrays["a"], np.arange(5))
    assert arrays["b"].dtype == np.float32
    assert meta == {"k": [1, 2], "s": "x"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as fh:
            fh.write('{"v": 2')  # half-written ...
            raise RuntimeError("crash")  # ... then the writer dies
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_truncated_file_gives_clear_error(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"a": np.arange(1000)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="m.npz.*corrupt or truncated"):
        load_arrays(path)


def test_foreign_npz_and_missing_file(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match="__meta__"):
        load_arrays(path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_arrays(tmp_path / "nope.npz")


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'o'.*object"):
        save_arrays(tmp_path / "x.npz", {"o": np.array([{}, 1], dtype=object)}, {})


def test_temp_files_of_a_killed_save_are_removed_by_the_next_save_or_load(tmp_path):
    """A save killed mid-write (SIGKILL: no cleanup runs) leaves its temp file; the next save or
    load of that path removes it. Temp files of live writers are kept."""
    import os
    import subprocess
    import sys

    path = tmp_path / "big.npz"
    code = (
        "import os, signal, sys\n"
        "from cmhash.io import atomic_write\n"
        "with atomic_write(sys.argv[1]) as fh:\n"
        "    fh.write(b'x' * 100000); fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    temps = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))  # noqa: E731
    seen = []
    for _ in range(3):  # each killed save's start removes the one before: never more than one left
        out = subprocess.run([sys.executable, "-c", code, str(path)], timeout=120)
        assert out.returncode == -9
        assert len(temps()) == 1 and temps()[0] not in seen and not path.exists()
        seen += temps()
    # a live writer's temp file (this process's pid) must survive
    live = tmp_path / f".big.npz.{os.getpid()}.abcd.tmp"
    live.write_bytes(b"in progress")
    save_arrays(path, {"a": np.arange(3)}, {})
    assert temps() == [live.name]
    # and a load cleans too; an old pid-less temp is removed only once old
    (tmp_path / ".big.npz.q1w2e3.tmp").write_bytes(b"old")
    old = tmp_path / ".big.npz.z9y8x7.tmp"
    old.write_bytes(b"old")
    os.utime(old, (0, 0))
    load_arrays(path)
    assert temps() == sorted([live.name, ".big.npz.q1w2e3.tmp"])


def test_arrays_checksum_is_that_of_the_stored_record():
    """int keys and tuples come back from JSON as strings and lists: same checksum either way."""
    from cmhash.io import arrays_checksum

    arrays = {"w": np.arange(4.0)}
    meta = {"per_class": {2: 1, 10: 3}, "shape": (3, 4)}
    stored = json.loads(json.dumps(meta))
    assert arrays_checksum(arrays, meta) == arrays_checksum(arrays, stored)
    assert arrays_checksum(arrays, meta) != arrays_checksum({"w": np.arange(4.0) + 1}, meta)
    assert arrays_checksum(arrays, meta) != arrays_checksum({"v": np.arange(4.0)}, meta)
