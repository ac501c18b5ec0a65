"""`cmhash index build --backend milvus`: the WIKI database codes go into a Milvus Lite collection
that answers like the HammingIndex of the same codes (same distances, ranking rule in test_backends)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cmhash.cli import app
from cmhash.index import HammingIndex
from cmhash.methods.cca_itq import LinearSignModel

pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")

from cmhash.index.milvus import MilvusIndex  # noqa: E402


@pytest.mark.wiki
def test_index_build_into_milvus(tmp_path, wiki_path, monkeypatch, milvus_children):
    monkeypatch.setenv("CMHASH_DATA", str(wiki_path.parent.parent))
    from cmhash.data.protocols import load_dataset

    data = load_dataset("wiki")
    rng = np.random.default_rng(0)
    model = LinearSignModel(
        mean={m: np.zeros(d) for m, d in data.dims.items()},
        proj={m: rng.standard_normal((d, 24)) for m, d in data.dims.items()},
        bits=24, hparams={},
    )
    model.save(tmp_path / "run" / "model.npz")
    uri = str(tmp_path / "codes.db")
    args = ["index", "build", str(tmp_path / "run"), "--dataset", "wiki", "--backend", "milvus", "--uri", uri, "--collection", "wiki_image"]
    before = set(milvus_children())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, args)  # the collection now exists and is not empty
    assert again.exit_code == 2 and "already holds" in " ".join(again.output.split())
    assert set(milvus_children()) == before  # the CLI stopped its Milvus Lite server
    db = model.encode("image", data.database.image)
    ours = HammingIndex.from_codes(db, ids=np.arange(len(db)) if data.database.ids is None else data.database.ids)
    query = model.encode("text", data.query.text[:20])
    with MilvusIndex(uri, "wiki_image") as index:
        assert len(index) == len(data.database) and index.nbits == 24
        assert index.info["modality"] == "image" and index.info["dataset_checksum"] == data.checksum()
        np.testing.assert_array_equal(index.search(query, 10)[1], ours.search(query, 10)[1])
    missing = CliRunner().invoke(app, ["index", "build", str(tmp_path / "run"), "--dataset", "wiki", "--backend", "milvus"])
    assert missing.exit_code == 2 and "needs --uri" in " ".join(missing.output.split())
