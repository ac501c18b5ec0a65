"""Readers: each layout the field ships, written here in its real format, read back exactly."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse

from cmhash.data.readers import LAYOUTS, read_arrays, read_source


def _items(n, d_img=5, d_txt=3, c=4, seed=0, single=False):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n, d_img))
    text = rng.random((n, d_txt))
    if single:
        labels = rng.integers(1, c + 1, size=(n, 1)).astype(np.uint8)  # MATLAB class indices
    else:
        labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
        labels[labels.sum(1) == 0, 0] = 1
    return image, text, labels


def _write_matlab_v73(path, arrays):
    """A MATLAB v7.3 file as MATLAB writes it: 512-byte header, column-major (transposed) data."""
    with h5py.File(path, "w", userblock_size=512) as fh:
        for key, value in arrays.items():
            if scipy.sparse.issparse(value):
                csc = scipy.sparse.csc_matrix(value)
                grp = fh.create_group(key)
                grp.attrs["MATLAB_sparse"] = np.uint64(csc.shape[0])
                grp.attrs["MATLAB_class"] = np.bytes_("double")
                grp.create_dataset("data", data=csc.data)
                grp.create_dataset("ir", data=csc.indices.astype(np.uint64))
                grp.create_dataset("jc", data=csc.indptr.astype(np.uint64))
                continue
            ds = fh.create_dataset(key, data=np.asarray(value).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(128))


def _check(ds, image, text, labels):
    np.testing.assert_array_equal(ds.image, image)
    np.testing.assert_array_equal(ds.text, text)
    np.testing.assert_array_equal(ds.labels, labels)


def test_wiki_layout_v5_class_indices_become_one_hot(tmp_path):
    i_tr, t_tr, l_tr = _items(12, single=True, seed=1)
    i_te, t_te, l_te = _items(5, single=True, seed=2)
    l_tr[0, 0], l_te[0, 0] = 1, 4  # classes 1 and 4 both occur
    path = tmp_path / "wikiData.mat"
    scipy.io.savemat(path, dict(I_tr=i_tr, T_tr=t_tr, L_tr=l_tr, I_te=i_te, T_te=t_te, L_te=l_te,
                                sampleInds=np.arange(1, 13)[None]))
    src = read_source(path)
    assert src.layout.name == "wiki" and list(src.parts) == ["train", "test"]
    assert src.parts["train"].num_classes == 4
    expected = np.eye(4, dtype=np.uint8)[l_tr[:, 0] - 1]
    _check(src.parts["train"], i_tr, t_tr, expected)
    _check(src.parts["test"], i_te, t_te, np.eye(4, dtype=np.uint8)[l_te[:, 0] - 1])
    pool, ranges = src.pool()
    assert len(pool) == 17 and ranges == {"train": (0, 12), "test": (12, 17)}


def test_zero_based_class_indices(tmp_path):
    image, text, _ = _items(6)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", image=image, text=text, labels=labels)
    src = read_source(tmp_path / "d.npz")
    _check(src.parts["all"], image, text, np.eye(3, dtype=np.uint8)[labels])
    assert "0-based" in src.notes["labels"]


def test_all_layout_one_file_v5_and_sparse_text(tmp_path):
    image, text, labels = _items(10)
    text[text < 0.5] = 0
    path = tmp_path / "one.mat"
    scipy.io.savemat(path, dict(XAll=image, YAll=scipy.sparse.csr_matrix(text), LAll=labels))
    assert scipy.sparse.issparse(scipy.io.loadmat(path)["YAll"])  # the file really is sparse
    src = read_source(path)
    assert src.layout.name == "all"
    _check(src.parts["all"], image, text, labels)


def test_all_layout_three_files_v5(tmp_path):
    image, text, labels = _items(9)
    paths = [tmp_path / f"mir-{k}.mat" for k in ("xall", "yall", "lall")]
    for p, (k, v) in zip(paths, dict(XAll=image, YAll=text, LAll=labels).items()):
        scipy.io.savemat(p, {k: v})
    src = read_source(paths)
    _check(src.parts["all"], image, text, labels)
    assert src.files == tuple(paths)


def test_same_key_in_two_files_is_an_error(tmp_path):
    image, text, labels = _items(4)
    a, b = tmp_path / "a.mat", tmp_path / "b.mat"
    scipy.io.savemat(a, dict(XAll=image, YAll=text, LAll=labels))
    scipy.io.savemat(b, dict(XAll=image))
    with pytest.raises(ValueError, match=r"'XAll' is in both .*a\.mat and .*b\.mat"):
        read_source([a, b])


def test_matlab_v73_is_transposed_back_even_when_square(tmp_path):
    image, text, labels = _items(6, d_img=6, d_txt=6, c=6, seed=3)  # every matrix square
    path = tmp_path / "v73.mat"
    _write_matlab_v73(path, dict(XAll=image, YAll=text, LAll=labels))
    assert h5py.is_hdf5(path)
    with h5py.File(path, "r") as fh:  # what a naive reader sees: the transpose
        np.testing.assert_array_equal(fh["XAll"][()], image.T)
    _check(read_source(path).parts["all"], image, text, labels)


def test_matlab_v73_class_index_vector_and_sparse(tmp_path):
    image, text, labels = _items(7, single=True, seed=4)
    text[text < 0.6] = 0
    path = tmp_path / "v73.mat"
    _write_matlab_v73(path, dict(XAll=image, YAll=scipy.sparse.csr_matrix(text), LAll=labels))
    src = read_source(path)
    _check(src.parts["all"], image, text, np.eye(labels.max(), dtype=np.uint8)[labels[:, 0] - 1])


def test_h5py_written_by_python_is_not_transposed(tmp_path):
    image, text, labels = _items(8, seed=5)
    path = tmp_path / "MSCOCO_deep_doc2vec_data_rand.h5py"
    with h5py.File(path, "w") as fh:
        fh["XAll"], fh["YAll"], fh["LAll"] = image, text, labels
    _check(read_source(path).parts["all"], image, text, labels)


def test_hdf5_stored_column_major_without_matlab_marks_is_detected_by_row_counts(tmp_path):
    image, text, labels = _items(8, seed=6)
    path = tmp_path / "h5write.h5"
    with h5py.File(path, "w") as fh:
        fh["XAll"], fh["YAll"], fh["LAll"] = image.T, text.T, labels.T
    _check(read_source(path).parts["all"], image, text, labels)


def test_dcgh_layout(tmp_path):
    xd, yd, ld = _items(10, seed=7)
    xt, yt, lt = _items(4, seed=8)
    path = tmp_path / "MIRFlickr.mat"
    scipy.io.savemat(path, dict(XDatabase=xd, YDatabase=yd, databaseL=ld, XTest=xt, YTest=yt, testL=lt))
    src = read_source(path)
    assert src.layout.name == "dcgh" and src.layout.query == "test"
    _check(src.parts["database"], xd, yd, ld)
    _check(src.parts["test"], xt, yt, lt)


def test_iapr_layout(tmp_path):
    vd, yd, ld = _items(10, seed=9)
    vt, yt, lt = _items(3, seed=10)
    path = tmp_path / "iapr-tc12-rand.mat"
    scipy.io.savemat(path, dict(VDatabase=vd, YDatabase=yd, databaseL=ld, VTest=vt, YTest=yt, testL=lt))
    src = read_source(path)
    assert src.layout.name == "iapr"
    _check(src.parts["database"], vd, yd, ld)
    _check(src.parts["test"], vt, yt, lt)
    pool, _ = src.pool()
    np.testing.assert_array_equal(pool.image, np.concatenate([vd, vt]))  # UCCH's concat order


def test_npz_layout(tmp_path):
    image, text, labels = _items(11, seed=11)
    np.savez(tmp_path / "x.npz", image=image, text=text, labels=labels)
    _check(read_source(tmp_path / "x.npz").parts["all"], image, text, labels)


def _pickle_parts(seed=12):
    image, text, labels = _items(10, seed=seed)
    retrieval = dict(image=image[:7], text=text[:7], label=labels[:7])
    query = dict(image=image[7:], text=text[7:], label=labels[7:])
    train = dict(image=image[[1, 3, 5]], text=text[[1, 3, 5]], label=labels[[1, 3, 5]])
    return dict(train=train, query=query, retrieval=retrieval)


def test_pickle_needs_explicit_opt_in(tmp_path):
    path = tmp_path / "data.pkl"
    with open(path, "wb") as fh:
        pickle.dump(_pickle_parts(), fh)
    with pytest.raises(ValueError, match=r"data\.pkl: refusing to unpickle.*allow_pickle=True"):
        read_source(path)
    src = read_source(path, allow_pickle=True)
    assert src.layout.name == "pickle"
    parts = _pickle_parts()
    for name in ("train", "query", "retrieval"):
        p = parts[name]
        _check(src.parts[name], p["image"], p["text"], p["label"])


def test_pickle_three_files(tmp_path):
    parts = _pickle_parts()
    paths = []
    for name in ("train", "query", "retrieval"):
        paths.append(tmp_path / f"{name}.pkl")
        with open(paths[-1], "wb") as fh:
            pickle.dump(parts[name], fh)
    src = read_source(paths, allow_pickle=True)
    _check(src.parts["query"], parts["query"]["image"], parts["query"]["text"], parts["query"]["label"])


def test_missing_key_lists_keys_found_and_names_file(tmp_path):
    image, _, labels = _items(5)
    path = tmp_path / "partial.mat"
    scipy.io.savemat(path, dict(XAll=image, LAll=labels, extra=np.ones((1, 1))))
    with pytest.raises(ValueError) as err:
        read_source(path)
    msg = str(err.value)
    assert "partial.mat" in msg and "'YAll'" in msg and "keys found: LAll, XAll, extra" in msg


def test_no_known_layout(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, foo=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"odd\.npz: no known key layout; keys found: foo"):
        read_source(path)


def test_row_count_mismatch_names_keys(tmp_path):
    image, text, labels = _items(6)
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, dict(XAll=image, YAll=text[:5], LAll=labels))
    with pytest.raises(ValueError, match=r"bad\.mat: part 'all': row counts differ .*'YAll' \(5, 3\)"):
        read_source(path)


def test_non_binary_labels_name_file_and_part(tmp_path):
    image, text, labels = _items(6)
    labels = labels * 2
    np.savez(tmp_path / "l.npz", image=image, text=text, labels=labels)
    with pytest.raises(ValueError, match=r"l\.npz: part 'all' .*'labels' must be multi-hot"):
        read_source(tmp_path / "l.npz")


def test_nan_features_name_file(tmp_path):
    image, text, labels = _items(6)
    image[2, 1] = np.nan
    np.savez(tmp_path / "n.npz", image=image, text=text, labels=labels)
    with pytest.raises(ValueError, match=r"n\.npz: .*'image' contains NaN or inf \(first at row 2, column 1\)"):
        read_source(tmp_path / "n.npz")


@pytest.mark.parametrize("kind", ["mat-v5", "mat-v73", "npz", "pickle"])
def test_truncated_files_give_clear_errors(tmp_path, kind):
    image, text, labels = _items(50)
    arrays = dict(XAll=image, YAll=text, LAll=labels)
    if kind == "mat-v5":
        path = tmp_path / "t.mat"
        scipy.io.savemat(path, arrays)
    elif kind == "mat-v73":
        path = tmp_path / "t.mat"
        _write_matlab_v73(path, arrays)
    elif kind == "npz":
        path = tmp_path / "t.npz"
        np.savez(path, image=image, text=text, labels=labels)
    else:
        path = tmp_path / "t.pkl"
        with open(path, "wb") as fh:
            pickle.dump(_pickle_parts(), fh)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.(mat|npz|pkl).*(corrupt or truncated|cannot)"):
        read_source(path, allow_pickle=True)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        read_arrays(tmp_path / "nope.mat")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"x\.csv: unknown file type '\.csv'"):
        read_arrays(tmp_path / "x.csv")


def test_layout_keys_are_distinct_per_layout():
    names = [layout.name for layout in LAYOUTS]
    assert len(names) == len(set(names))
    for layout in LAYOUTS:
        assert set(layout.pool) <= set(layout.parts)


@pytest.mark.parametrize("name", ["garbage.mat", "garbage.h5", "garbage.npz"])
def test_garbage_files_give_clear_errors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: cannot read"):
        read_source(path)


def test_npz_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, image=np.array([np.ones(2), "x"], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz: holds object arrays"):
        read_source(path)


# ------------------------------------------------ cmhash feature files (cmhash features)
def test_npz_and_features_layouts_carry_views_and_ids(tmp_path):
    """A part's optional ``views`` / ``ids`` sit beside its ``image`` key; the pool joins them."""
    from cmhash.data.protocols import load_dataset

    image, text, labels = _items(7)
    views = np.random.default_rng(1).standard_normal((7, 3, 5))
    ids = np.array([f"img{i}.jpg" for i in range(7)])
    flat = tmp_path / "flat.npz"
    np.savez(flat, image=image, text=text, labels=labels, views=views, ids=ids)
    part = read_source(flat).parts["all"]
    np.testing.assert_array_equal(part.views, views)
    assert part.ids.tolist() == ids.tolist()

    query = np.array([1, 4])
    database = np.setdiff1d(np.arange(7), query)
    split = tmp_path / "split.npz"
    np.savez(split, **{f"{name}/{key}": arr[rows] for name, rows in (("database", database), ("query", query))
                       for key, arr in (("image", image), ("text", text), ("labels", labels), ("views", views),
                                        ("ids", ids))})
    data = load_dataset(split)
    assert data.info["layout"] == "features" and data.info["protocol"] == "shipped"
    assert data.query.ids.tolist() == ["img1.jpg", "img4.jpg"]
    np.testing.assert_array_equal(data.query.views, views[query])
    np.testing.assert_array_equal(data.train.views, views[database])
    np.testing.assert_array_equal(data.database.image, image[database])
    without_views = tmp_path / "no-views.npz"
    np.savez(without_views, **{f"{name}/{key}": arr[rows] for name, rows in (("database", database), ("query", query))
                               for key, arr in (("image", image), ("text", text), ("labels", labels))})
    assert load_dataset(without_views).train.views is None
