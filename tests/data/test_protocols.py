"""Protocols: WIKI as the papers split it, and each named protocol on files written here."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import scipy.io

import cmhash
from cmhash.data.protocols import BENCHMARKS, PROTOCOLS, data_roots, describe, load_dataset

WIKI_SHA256 = "915bad0fd08b6cdd6cb5ebd6c831787d70885b4c340f8c796e54752f03d9332c"


def _write_all_npz(path, n, c=5, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n, 3)).astype(np.float32)
    text = rng.standard_normal((n, 2)).astype(np.float32)
    labels = np.eye(c, dtype=np.uint8)[rng.integers(0, c, n)]
    image[:, 0] = np.arange(n)  # row identity, to check which items went where
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=image, text=text, labels=labels)
    return image


def _rows(split):
    return split.image[:, 0].astype(np.int64)


# --------------------------------------------------------------------------------------- WIKI
@pytest.mark.wiki
def test_wiki_dcgh_protocol(wiki_path, monkeypatch):
    monkeypatch.setenv("CMHASH_DATA", str(wiki_path.parent.parent))
    data = cmhash.load_dataset("wiki")  # the public entry point, found through CMHASH_DATA
    assert (len(data.train), len(data.query), len(data.database)) == (2173, 693, 2173)
    assert len(data) == 2866 and data.num_classes == 10
    assert data.dims == {"image": 128, "text": 10}
    raw = scipy.io.loadmat(wiki_path)
    np.testing.assert_array_equal(data.query.image, raw["I_te"])
    np.testing.assert_array_equal(data.database.text, raw["T_tr"])
    np.testing.assert_array_equal(data.train.labels.argmax(1) + 1, raw["L_tr"][:, 0])
    assert (data.query.labels.sum(1) == 1).all()  # single-label
    info = data.info
    assert info["protocol"] == "dcgh" and info["benchmark"] == "wiki" and info["split_seed"] == 0
    assert info["source_sha256"] == {"wikiData.mat": WIKI_SHA256}
    assert data.query.info["protocol"] == "dcgh"  # splits carry the provenance too
    # by path, and the shipped protocol, give the same split
    by_path = load_dataset(wiki_path, protocol="shipped")
    assert by_path.query.checksum() == data.query.checksum()
    assert by_path.database.checksum() == data.database.checksum()


@pytest.mark.wiki
def test_wiki_is_too_small_for_deep_supervised_and_has_no_ucch(wiki_path):
    with pytest.raises(ValueError, match=r"'deep-supervised' needs more than 15000 items.*has 2866"):
        load_dataset(wiki_path, "deep-supervised")
    with pytest.raises(ValueError, match=r"'ucch' is not defined for benchmark 'wiki'"):
        load_dataset(wiki_path, "ucch")


# ------------------------------------------------------------------------- named protocols
def test_deep_supervised_counts_disjoint_and_seeded(tmp_path):
    path = tmp_path / "mirflickr.npz"
    _write_all_npz(path, 16_000)
    a = load_dataset(path, "deep-supervised", seed=3)
    q, tr, db = _rows(a.query), _rows(a.train), _rows(a.database)
    assert (len(q), len(tr), len(db)) == (5000, 10_000, 11_000)
    assert np.intersect1d(q, db).size == 0 and np.union1d(q, db).size == 16_000
    assert np.isin(tr, db).all() and np.unique(tr).size == 10_000
    b = load_dataset(path, "deep-supervised", seed=3)
    c = load_dataset(path, "deep-supervised", seed=4)
    assert a.checksum() == b.checksum()
    assert not np.array_equal(q, _rows(c.query))
    assert a.info["split_seed"] == 3 and a.info["benchmark"] == "mirflickr"


def test_deep_supervised_too_small_is_clear(tmp_path):
    path = tmp_path / "small.npz"
    _write_all_npz(path, 15_000)
    with pytest.raises(ValueError, match=r"small\.npz.*needs more than 15000 items.*has 15000"):
        load_dataset(path, "deep-supervised")


@pytest.mark.parametrize("bench, size", [("mirflickr", 2000), ("nus-wide", 2100), ("mscoco", 5000)])
def test_ucch_query_is_the_last_items(tmp_path, bench, size):
    path = tmp_path / "features.npz"
    _write_all_npz(path, size + 700)
    data = load_dataset(path, "ucch", benchmark=bench)
    np.testing.assert_array_equal(_rows(data.query), np.arange(700, 700 + size))
    np.testing.assert_array_equal(_rows(data.database), np.arange(700))
    assert data.train.checksum() == data.database.checksum()


def test_ucch_on_iapr_concatenates_database_then_test(tmp_path):
    rng = np.random.default_rng(0)
    n_db, n_te = 2300, 400
    v = rng.standard_normal((n_db + n_te, 3))
    v[:, 0] = np.arange(n_db + n_te)
    y = rng.random((n_db + n_te, 2))
    lab = (rng.random((n_db + n_te, 6)) < 0.5).astype(np.uint8)
    lab[:, 0] = 1
    path = tmp_path / "iapr-tc12-rand.mat"
    scipy.io.savemat(path, dict(VDatabase=v[:n_db], YDatabase=y[:n_db], databaseL=lab[:n_db],
                                VTest=v[n_db:], YTest=y[n_db:], testL=lab[n_db:]))
    data = load_dataset(path, "ucch")  # the file name says it is IAPR
    np.testing.assert_array_equal(_rows(data.query), np.arange(n_db + n_te - 2000, n_db + n_te))
    assert len(data.database) == n_db + n_te - 2000
    shipped = load_dataset(path, "shipped")
    np.testing.assert_array_equal(_rows(shipped.query), np.arange(n_db, n_db + n_te))


def test_dcgh_draws_the_paper_count_at_random_when_not_shipped(tmp_path):
    path = tmp_path / "data.npz"
    _write_all_npz(path, 2500)
    a = load_dataset(path, "dcgh", seed=1, benchmark="nus-wide")
    q, db = _rows(a.query), _rows(a.database)
    assert len(q) == 1867 and len(db) == 633 and np.intersect1d(q, db).size == 0
    assert not np.array_equal(q, np.arange(1867))  # random, not the first items
    assert a.train.checksum() == a.database.checksum()
    assert np.array_equal(q, _rows(load_dataset(path, "dcgh", seed=1, benchmark="nus-wide").query))
    assert "random" in a.info["split"]


def test_dcgh_uses_a_shipped_test_split_of_the_paper_size(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2600, 3))
    x[:, 0] = np.arange(2600)
    y = rng.random((2600, 2))
    lab = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 2600)]
    path = tmp_path / "MIRFlickr.mat"
    scipy.io.savemat(path, dict(XDatabase=x[:600], YDatabase=y[:600], databaseL=lab[:600],
                                XTest=x[600:], YTest=y[600:], testL=lab[600:]))
    data = load_dataset(path, "dcgh")
    np.testing.assert_array_equal(_rows(data.query), np.arange(600, 2600))
    assert "shipped" in data.info["split"]


def test_dcgh_needs_a_known_benchmark(tmp_path):
    path = tmp_path / "custom.npz"
    _write_all_npz(path, 3000)
    with pytest.raises(ValueError, match=r"custom\.npz.*'dcgh' defines query counts only for.*benchmark="):
        load_dataset(path, "dcgh")
    with pytest.raises(ValueError, match=r"custom\.npz: ships no query split.*protocol="):
        load_dataset(path)


def test_pickle_shipped_split_locates_train_inside_retrieval(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((20, 3))
    image[:, 0] = np.arange(20)
    text = rng.random((20, 2))
    label = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 20)]
    part = lambda idx: dict(image=image[idx], text=text[idx], label=label[idx])  # noqa: E731
    path = tmp_path / "coco.pkl"
    with open(path, "wb") as fh:
        pickle.dump(dict(train=part([2, 4, 6]), query=part(range(15, 20)), retrieval=part(range(15))), fh)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_dataset(path)
    data = load_dataset(path, allow_pickle=True)
    assert data.info["protocol"] == "shipped"
    np.testing.assert_array_equal(_rows(data.train), [2, 4, 6])
    np.testing.assert_array_equal(_rows(data.query), np.arange(15, 20))
    np.testing.assert_array_equal(_rows(data.database), np.arange(15))


def test_found_through_cmhash_data_with_checksum(tmp_path, monkeypatch):
    path = tmp_path / "mirflickr" / "mirflickr.npz"
    _write_all_npz(path, 2400)
    monkeypatch.setenv("CMHASH_DATA", str(tmp_path))
    assert data_roots() == [tmp_path]
    data = load_dataset("MIRFlickr25K", "ucch")  # an alias, any case
    assert data.info["source"] == [str(path.resolve())]
    assert data.info["source_sha256"] == {"mirflickr.npz": hashlib.sha256(path.read_bytes()).hexdigest()}
    found = {row["name"]: row["found"] for row in describe()}
    assert found["mirflickr"] == [str(path)] and found["iapr"] is None


def test_not_found_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("CMHASH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"benchmark 'nus-wide' not found: looked in {tmp_path}"):
        load_dataset("nuswide")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(tmp_path / "missing.mat")


def test_unknown_protocol_and_benchmark(tmp_path):
    path = tmp_path / "d.npz"
    _write_all_npz(path, 100)
    with pytest.raises(ValueError, match=r"unknown protocol 'foo'; known: shipped, dcgh"):
        load_dataset(path, "foo")
    with pytest.raises(ValueError, match=r"unknown benchmark 'bar'"):
        load_dataset(path, "ucch", benchmark="bar")


def test_table_is_consistent():
    assert set(PROTOCOLS) == {"shipped", "dcgh", "deep-supervised", "ucch"}
    assert BENCHMARKS["wiki"].query == {"dcgh": 693}
    assert BENCHMARKS["mirflickr"].query["dcgh"] == 2000 and BENCHMARKS["iapr"].query["dcgh"] == 2000
    assert BENCHMARKS["nus-wide"].query == {"dcgh": 1867, "ucch": 2100, "deep-supervised": 5000}
    assert BENCHMARKS["mscoco"].query["ucch"] == 5000
    for b in BENCHMARKS.values():
        assert set(b.query) <= set(PROTOCOLS) and b.default_protocol in PROTOCOLS


def test_cli_datasets_lists_roots_benchmarks_and_found_files(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cmhash.cli import app

    _write_all_npz(tmp_path / "iapr" / "iapr.npz", 50)
    monkeypatch.setenv("CMHASH_DATA", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    assert f"looking in: {tmp_path}" in result.output
    assert str(tmp_path / "iapr" / "iapr.npz") in result.output
    for name in [*BENCHMARKS, *PROTOCOLS]:
        assert name in result.output
    assert result.output.count("not found") == len(BENCHMARKS) - 1


def test_items_without_labels_need_the_flag(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype=np.uint8)[np.arange(2100) % 3]
    labels[7] = 0
    np.savez(path, image=rng.random((2100, 2)), text=rng.random((2100, 2)), labels=labels)
    with pytest.raises(ValueError, match=r"d\.npz: part 'all'.*1 label rows are empty \(first at row 7\)"):
        load_dataset(path, "ucch", benchmark="mirflickr")
    data = load_dataset(path, "ucch", benchmark="mirflickr", allow_empty_labels=True)
    assert data.train.labels[7].sum() == 0 and len(data.query) == 2000


def test_wiki_roph_shipped_split(wiki_roph_path, monkeypatch):
    """WIKI-RoPH: a MATLAB struct with features x items matrices, sparse labels and a 1-based
    split; query = ind_test, train = database = ind_train, both in stored order."""
    monkeypatch.setenv("CMHASH_DATA", str(wiki_roph_path.parent.parent))
    data = load_dataset("wiki-roph")
    assert (len(data.train), len(data.query), len(data.database)) == (2173, 693, 2173)
    assert data.train.image.shape[1] == 128 and data.train.text.shape[1] == 100
    assert data.train.labels.shape[1] == 10
    raw = scipy.io.loadmat(wiki_roph_path)["data"][0, 0]
    test_rows = raw["split"][0, 0]["ind_test"].reshape(-1).astype(int) - 1
    train_rows = raw["split"][0, 0]["ind_train"].reshape(-1).astype(int) - 1
    np.testing.assert_array_equal(data.query.image, raw["X1"].T[test_rows])
    np.testing.assert_array_equal(data.train.text, raw["X2"].T[train_rows])
    np.testing.assert_array_equal(data.query.labels, raw["Y"].toarray().T[test_rows].astype(np.uint8))
    # per-class training counts stated in the file's SOURCE.md
    assert data.train.labels.sum(0).tolist() == [138, 258, 254, 255, 215, 176, 178, 148, 214, 337]
    assert data.info["benchmark"] == "wiki-roph" and "1-based" in data.info["split"]


def test_index_split_layout_errors(tmp_path):
    """Split item numbers out of range for their stated base are refused with the key named."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    split = {"ind_train": np.arange(1, 9, dtype=np.uint16)[None], "ind_test": np.array([[9, 10]])}
    data = {"X1": rng.normal(size=(4, 10)), "X2": rng.normal(size=(3, 10)),
            "Y": scipy.sparse.csc_matrix(np.eye(2, dtype=bool)[:, rng.integers(0, 2, 10)]), "split": split}
    good = tmp_path / "good.mat"
    scipy.io.savemat(good, {"data": data})
    ds = load_dataset(good)
    assert (len(ds.query), len(ds.database)) == (2, 8)
    split["ind_test"] = np.array([[10, 11]])  # 11 > 10 items
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"data": data})
    with pytest.raises(ValueError, match=r"data/split/ind_test.*1\.\.10"):
        load_dataset(bad)
