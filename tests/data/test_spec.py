"""Dataset specs: the two files of issue 15 load through a spec, inspect suggests a spec that
loads them, and everything a file cannot tell must be stated (the error says what)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from cmhash.data.inspection import inspect_files
from cmhash.data.protocols import load_dataset
from cmhash.data.spec import DatasetSpec, list_arrays, load_canonical, load_spec, read_spec, save_canonical


def _cell_file(path, n=40, seed=0, gt=None):
    """The second layout of issue 15: a cell array X{1} (image), X{2} (text), features x items,
    and class indices gt in 1..10 (n x 1), as MATLAB's save writes them (scipy.io.savemat)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(6, n)), rng.random((4, n))
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = x1, x2
    if gt is None:
        gt = np.concatenate([np.arange(1, 11), rng.integers(1, 11, n - 10)])[:, None].astype(np.float64)
    scipy.io.savemat(path, {"X": cell, "gt": gt})
    return x1.T, x2.T, gt.reshape(-1).astype(int)


def test_cell_file_loads_through_a_spec_and_inspect_suggests_it(tmp_path):
    path = tmp_path / "cells.mat"
    image, text, gt = _cell_file(path)
    entries = list_arrays(path)
    assert {"X", "X{1}", "X{2}", "gt"} <= set(entries)
    assert entries["X{1}"].shape == (6, 40) and entries["X"].kind == "cell"
    found = inspect_files(path)
    assert found.spec is not None, found.problem
    assert (found.spec.image, found.spec.text, found.spec.labels) == ("X{1}", "X{2}", "gt")
    assert found.spec.labels_format == "class-index" and found.spec.labels_base == 1
    assert any("1-based" in g for g in found.guesses)  # the base was a guess: said so
    data = load_spec(found.spec)
    np.testing.assert_array_equal(data.image, image)
    np.testing.assert_array_equal(data.text, text)
    np.testing.assert_array_equal(data.labels, np.eye(10, dtype=np.uint8)[gt - 1])
    # the suggestion round-trips through TOML
    toml = tmp_path / "cells.toml"
    toml.write_text(found.spec_toml())
    assert load_spec(toml).checksum() == data.checksum()


def test_cell_file_with_a_count_split_through_load_dataset(tmp_path):
    path = tmp_path / "cells.mat"
    image, _, _ = _cell_file(path)
    data = load_dataset(path, image="X{1}", text="X{2}", labels="gt", labels_base=1,
                        split={"query": 10, "database": 30, "order": ["database", "query"]})
    assert (len(data.train), len(data.query), len(data.database)) == (30, 10, 30)
    np.testing.assert_array_equal(data.query.image, image[30:])
    np.testing.assert_array_equal(data.train.image, image[:30])


def test_wiki_roph_through_the_suggested_spec(wiki_roph_path, monkeypatch):
    found = inspect_files(wiki_roph_path)
    assert found.spec is not None and not found.guesses
    data = load_spec(found.spec)
    assert (len(data.train), len(data.query), len(data.database)) == (2173, 693, 2173)
    assert data.dims == {"image": 128, "text": 100} and data.num_classes == 10
    raw = scipy.io.loadmat(wiki_roph_path)["data"][0, 0]
    test_rows = raw["split"][0, 0]["ind_test"].reshape(-1).astype(int) - 1
    np.testing.assert_array_equal(data.query.image, raw["X1"].T[test_rows])
    monkeypatch.setenv("CMHASH_DATA", str(wiki_roph_path.parent.parent))
    registered = load_dataset("wiki-roph")  # the benchmark is a spec too: the same items
    for role in ("train", "query", "database"):
        assert registered.split(role).checksum() == data.split(role).checksum()
    assert registered.info["protocol"] == "shipped" and registered.info["benchmark"] == "wiki-roph"


def test_import_writes_the_canonical_form_with_provenance(tmp_path, wiki_roph_path):
    from typer.testing import CliRunner

    from cmhash.cli import app

    spec_file = tmp_path / "roph.toml"
    runner = CliRunner()
    res = runner.invoke(app, ["data", "inspect", str(wiki_roph_path), "--spec-out", str(spec_file)])
    assert res.exit_code == 0, res.output
    assert "data/split/ind_test" in res.output and "1 x 693" in res.output and "uint16" in res.output
    out = tmp_path / "roph.npz"
    res = runner.invoke(app, ["data", "import", str(spec_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = load_dataset(out)
    assert (len(data.train), len(data.query), len(data.database)) == (2173, 693, 2173)
    assert data.info["spec"]["image"] == "data/X1"
    assert data.info["imported_from_sha256"]["wiki.mat"].startswith("e417067e")
    assert data.checksum() == load_spec(spec_file).checksum()
    # another protocol on the imported file applies to its items, not the stored split
    with pytest.raises(ValueError, match="deep-supervised"):
        load_dataset(out, protocol="deep-supervised")


def test_stated_things_and_ambiguities(tmp_path):
    path = tmp_path / "cells.mat"
    _cell_file(path)
    base = dict(files=path, image="X{1}", text="X{2}", labels="gt")
    with pytest.raises(ValueError, match="labels_base = 1"):  # 1..10 and no 0: 0- or 1-based?
        load_spec(DatasetSpec(**base))
    # split indices within 1..n-1 could be either numbering
    idx = {"q": np.arange(3, 8)[None], "d": np.arange(10, 30)[None]}
    scipy.io.savemat(tmp_path / "idx.mat", idx)
    two = dict(base, files=(path, tmp_path / "idx.mat"), labels_base=1)
    with pytest.raises(ValueError, match="split.base = 1"):
        load_spec(DatasetSpec(**two, split={"query": "q", "database": "d"}))
    stated = load_spec(DatasetSpec(**two, split={"query": "q", "database": "d", "base": 1}))
    assert len(stated.query) == 5 and len(stated.database) == 20
    # a 0 or an n decides the base without being stated; both together fit neither
    scipy.io.savemat(tmp_path / "idx.mat", {"q": np.array([[0, 1]]), "d": np.array([[5, 40]])})
    with pytest.raises(ValueError, match="neither 0-based nor 1-based"):
        load_spec(DatasetSpec(**two, split={"query": "q", "database": "d"}))
    with pytest.raises(ValueError, match="labels_format"):  # 0/1 vector: 2 classes or one label column?
        scipy.io.savemat(tmp_path / "bin.mat", {"A": np.ones((5, 3)), "B": np.ones((5, 2)), "L": np.array([0, 1, 1, 0, 1])})
        load_spec(DatasetSpec(files=tmp_path / "bin.mat", image="A", text="B", labels="L"))
    with pytest.raises(ValueError, match="state its orientation"):  # 4 x 4 and 4 x 4: which axis?
        scipy.io.savemat(tmp_path / "sq.mat", {"A": np.ones((4, 4)), "B": np.ones((4, 4)), "L": np.eye(4)})
        load_spec(DatasetSpec(files=tmp_path / "sq.mat", image="A", text="B", labels="L"))
    with pytest.raises(ValueError, match=r"X\{1\}"):  # a wrong path lists the close ones
        load_spec(DatasetSpec(**dict(base, image="X{3}"), labels_base=1))
    with pytest.raises(ValueError, match="did you mean 'labels_base'"):
        DatasetSpec.from_mapping(dict(base, label_base=1))
    with pytest.raises(ValueError, match="order"):  # counts without their order
        DatasetSpec(**base, split={"query": 10})


def test_matlab_v73_struct_and_cell(tmp_path):
    """v7.3: a struct (HDF5 group) and a cell (references), as MATLAB writes them (transposed)."""
    rng = np.random.default_rng(1)
    n = 12
    image, text = rng.normal(size=(n, 5)), rng.normal(size=(n, 3))
    labels = (rng.random((n, 4)) < 0.5).astype(np.float64)
    labels[labels.sum(1) == 0, 0] = 1
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as fh:
        refs = fh.create_group("#refs#")
        a = refs.create_dataset("a", data=image)  # MATLAB d x n is stored as n x d
        b = refs.create_dataset("b", data=text)
        cell = fh.create_dataset("X", data=np.array([[a.ref], [b.ref]], dtype=h5py.ref_dtype))
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        grp = fh.create_group("meta")
        grp.attrs["MATLAB_class"] = np.bytes_("struct")
        grp.create_dataset("L", data=labels)  # MATLAB n x c stored as c x n
        grp.create_dataset("test", data=np.arange(1, 4, dtype=np.float64)[:, None])
        grp.create_dataset("train", data=np.arange(4, n + 1, dtype=np.float64)[:, None])
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(128))
    entries = list_arrays(path)
    assert entries["X{1}"].shape == (5, n) and entries["meta/L"].shape == (4, n)
    found = inspect_files(path)
    assert found.spec is not None, found.problem
    data = load_spec(found.spec)
    np.testing.assert_array_equal(data.image, image)
    np.testing.assert_array_equal(data.text, text)
    np.testing.assert_array_equal(data.labels, labels.astype(np.uint8))
    assert len(data.query) == 3 and len(data.database) == n - 3  # n = 12 occurs: 1-based decided


def test_h5_and_npz_items_by_features_with_ids_and_a_protocol(tmp_path):
    rng = np.random.default_rng(2)
    n = 30
    image, text = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))
    labels = rng.integers(0, 3, n)
    ids = np.array([f"item{i}" for i in range(n)])
    np.savez(tmp_path / "f.npz", img=image, txt=text, y=labels, names=ids)
    spec = DatasetSpec(files=tmp_path / "f.npz", image="img", text="txt", labels="y", ids="names",
                       split={"protocol": "deep-supervised"})
    with pytest.raises(ValueError, match="needs more than 15000 items"):
        load_spec(spec)
    data = load_spec(DatasetSpec(files=tmp_path / "f.npz", image="img", text="txt", labels="y", ids="names"))
    assert data.info["labels"].startswith("class indices (0-based)") and data.ids[3] == "item3"
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        fh["feat/image"], fh["feat/text"] = image.T, text.T
        fh["y"] = np.eye(3)[labels].T
        fh["is_query"] = np.arange(n) < 5
    data = load_spec(DatasetSpec(files=tmp_path / "f.h5", image="feat/image", text="feat/text", labels="y",
                                 labels_format="multi-hot", orientation="features-by-items",
                                 split={"query": "is_query"}))
    np.testing.assert_array_equal(data.query.image, image[:5])
    assert len(data.database) == n - 5 and len(data.train) == n - 5


def test_canonical_needs_a_split(tmp_path):
    path = tmp_path / "cells.mat"
    _cell_file(path)
    data, rows = read_spec(DatasetSpec(files=path, image="X{1}", text="X{2}", labels="gt", labels_base=1))
    assert rows is None
    with pytest.raises(ValueError, match="split"):
        save_canonical(data, rows, tmp_path / "x.npz", {})
    data, rows = read_spec(DatasetSpec(files=path, image="X{1}", text="X{2}", labels="gt", labels_base=1,
                                       split={"query": 5, "order": ["query"]}))
    save_canonical(data, rows, tmp_path / "x.npz", {"note": "test"})
    back = load_canonical(tmp_path / "x.npz")
    assert back.query.checksum() == data.query.checksum()
    assert back.info["imported"]["dataset_checksum"] == data.checksum()


def test_train_and_eval_on_an_imported_file(tmp_path):
    """The canonical file is a --dataset for train and eval (eval re-checks the data checksum)."""
    from typer.testing import CliRunner

    from cmhash.cli import app

    path = tmp_path / "cells.mat"
    _cell_file(path, n=120)
    spec = tmp_path / "cells.toml"
    spec.write_text(f'[dataset]\nfiles = ["cells.mat"]\nimage = "X{{1}}"\ntext = "X{{2}}"\nlabels = "gt"\n'
                    'labels_base = 1\n[dataset.split]\nquery = 20\norder = ["query"]\n')
    runner = CliRunner()
    res = runner.invoke(app, ["data", "import", str(spec), "--out", str(tmp_path / "cells.npz")])
    assert res.exit_code == 0, res.output
    for dataset in (tmp_path / "cells.npz", spec):
        out = tmp_path / f"run-{dataset.suffix[1:]}"
        res = runner.invoke(app, ["train", "cca-itq", "--dataset", str(dataset), "--bits", "8", "--out", str(out)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["eval", str(out), "--check"])
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("layout_name", ["wiki", "dcgh", "iapr", "all", "roph"])
def test_the_field_layouts_are_specs_too(tmp_path, layout_name):
    """Every key layout load_dataset recognises, written as a spec by inspect, reads the same items
    as the layout reader (and the same split where the file ships one)."""
    from cmhash.data.readers import LAYOUTS_BY_NAME, read_source

    layout = LAYOUTS_BY_NAME[layout_name]
    rng = np.random.default_rng(3)
    arrays, sizes = {}, {"train": 9, "test": 6, "database": 9, "all": 15}
    for part, (ik, tk, lk) in layout.parts.items():
        n = sizes[part]
        arrays[ik], arrays[tk] = rng.normal(size=(n, 5)), rng.normal(size=(n, 3))
        if layout_name == "wiki":  # class indices 1..c as in wikiData.mat
            arrays[lk] = np.concatenate([[1, 2, 3], rng.integers(1, 4, n - 3)])[:, None].astype(np.float64)
        else:
            lab = (rng.random((n, 4)) < 0.5).astype(np.float64)
            lab[lab.sum(1) == 0, 0] = 1
            arrays[lk] = lab
    path = tmp_path / f"{layout_name}.mat"
    if layout_name == "roph":  # struct data, features x items, split item numbers (1-based)
        struct = {"X1": arrays["data/X1"].T, "X2": arrays["data/X2"].T,
                  "Y": scipy.sparse.csc_matrix(arrays["data/Y"].T),
                  "split": {"ind_train": np.arange(1, 10)[None], "ind_test": np.arange(10, 16)[None]}}
        scipy.io.savemat(path, {"data": struct})
    else:
        scipy.io.savemat(path, arrays)
    found = inspect_files(path)
    assert found.spec is not None and f"'{layout_name}' layout" in found.layout
    via_spec = load_spec(found.spec)
    source = read_source(path)
    pool, _ = source.pool()
    assert via_spec.replace(splits={}).checksum() == pool.replace(splits={}).checksum()
    if layout.ships_query:
        reference = load_dataset(path, "shipped")
        for role in ("train", "query", "database"):
            assert via_spec.split(role).checksum() == reference.split(role).checksum()


def test_wiki_suggested_spec_gives_the_dcgh_split(wiki_path, monkeypatch):
    """wikiData.mat's suggested spec (the 'wiki' layout) reads the items and split that
    load_dataset("wiki") (protocol dcgh: query = the shipped 693 test pairs) gives."""
    found = inspect_files(wiki_path)
    assert found.spec is not None and "'wiki' layout" in found.layout
    assert found.spec.parts == ("train", "test") and found.spec.labels_base == 1
    data = load_spec(found.spec)
    monkeypatch.setenv("CMHASH_DATA", str(wiki_path.parent.parent))
    reference = load_dataset("wiki")
    for role in ("train", "query", "database"):
        assert data.split(role).checksum() == reference.split(role).checksum()
    assert (len(data.train), len(data.query)) == (2173, 693)


@pytest.mark.parametrize("protocol", [None, "dcgh", "shipped"])
def test_wiki_benchmark_is_a_spec_and_reads_what_the_layout_reader_reads(wiki_path, monkeypatch, protocol):
    """load_dataset("wiki") reads wikiData.mat through its registered spec; the same file by path
    goes through the 'wiki' key layout. Both give the same items in every split."""
    monkeypatch.setenv("CMHASH_DATA", str(wiki_path.parent.parent))
    named = load_dataset("wiki", protocol)
    by_path = load_dataset(str(wiki_path), protocol)
    assert "spec" in named.info and "layout" in by_path.info
    assert named.info["protocol"] == by_path.info["protocol"] == (protocol or "dcgh")
    for role in ("train", "query", "database"):
        assert named.split(role).checksum() == by_path.split(role).checksum()


def test_a_features_file_with_ids_per_part(tmp_path):
    """`cmhash features` writes database/ and query/ parts with ids beside the image key: inspect
    suggests ids as a list per part, and the spec reads what load_dataset reads (ids included)."""
    rng = np.random.default_rng(5)
    arrays = {}
    for part, n in (("database", 30), ("query", 7)):
        arrays[f"{part}/image"], arrays[f"{part}/text"] = rng.normal(size=(n, 6)), rng.normal(size=(n, 4))
        arrays[f"{part}/labels"] = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
        arrays[f"{part}/ids"] = np.array([f"{part}-{i}" for i in range(n)])
    np.savez(tmp_path / "feat.npz", **arrays)
    found = inspect_files(tmp_path / "feat.npz")
    assert "'features' layout" in found.layout and found.spec.ids == ("database/ids", "query/ids")
    via_spec, reference = load_spec(found.spec), load_dataset(tmp_path / "feat.npz")
    for role in ("train", "query", "database"):
        assert via_spec.split(role).checksum() == reference.split(role).checksum()
    assert via_spec.query.ids[0] == "query-0"
    with pytest.raises(ValueError, match="one array per part"):
        DatasetSpec(files=tmp_path / "feat.npz", image=["database/image", "query/image"],
                    text=["database/text", "query/text"], labels=["database/labels", "query/labels"],
                    parts=["database", "query"], ids=["database/ids"])
