"""The search service over HTTP on 127.0.0.1 (ephemeral port), and the index/serve CLI."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from cmhash.cli import app
from cmhash.data.synthetic import make_synthetic
from cmhash.index import HammingIndex
from cmhash.methods.cca_itq import LinearSignModel
from cmhash.serve import SearchService, load_service, make_server, resolve_model_path

TIMEOUT = 10  # seconds per request: a hung server fails the test instead of blocking it


def linear_model(dims, bits, seed=0):
    """A CCA-ITQ-shaped model with random projections: real encode/save/load, no training time."""
    rng = np.random.default_rng(seed)
    return LinearSignModel(
        mean={m: np.zeros(d) for m, d in dims.items()},
        proj={m: rng.standard_normal((d, bits)) for m, d in dims.items()},
        bits=bits, hparams={},
    )


@pytest.fixture(scope="module")
def trained():
    data = make_synthetic(600, seed=1)
    model = linear_model(data.dims, 24)
    db_codes = model.encode("image", data.database.image)
    return data, model, db_codes


@pytest.fixture(scope="module")
def server(trained):
    _, model, db_codes = trained
    index = HammingIndex.from_codes(db_codes, ids=np.arange(len(db_codes)) + 1000, info={"modality": "image"})
    srv = make_server(SearchService(model, index, max_queries=50, max_k=200), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", index
    srv.shutdown()
    srv.server_close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def call(url, path, body=None, raw=None):
    """(status, JSON reply) of a GET (no body) or POST request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_and_info(server):
    url, index = server
    assert call(url, "/health") == (200, {"status": "ok"})
    assert call(url, "/health?verbose=1") == (200, {"status": "ok"})
    status, info = call(url, "/info")
    assert status == 200
    assert info["model"]["method"] == "cca-itq" and info["model"]["bits"] == 24
    assert info["index"]["size"] == len(index) and info["index"]["info"] == {"modality": "image"}


def test_search_by_features_equals_the_index(server, trained):
    url, index = server
    data, model, _ = trained
    text = data.query.text[:5]
    status, reply = call(url, "/search", {"modality": "text", "features": text.tolist(), "k": 15})
    assert status == 200
    ids, dist = index.search(model.encode("text", text), 15)
    assert [r["ids"] for r in reply["results"]] == ids.tolist()
    assert [r["distances"] for r in reply["results"]] == dist.tolist()
    assert all(i >= 1000 for r in reply["results"] for i in r["ids"])  # external ids, not positions

    status, reply = call(url, "/search", {"modality": "text", "features": text.tolist(), "radius": 4})
    assert status == 200
    for got, (ids, dist) in zip(reply["results"], index.range_search(model.encode("text", text), 4)):
        assert got == {"ids": ids.tolist(), "distances": dist.tolist()}


def test_concurrent_requests_get_their_own_answers(server, trained):
    url, index = server
    data, model, _ = trained
    text = data.query.text[:8]
    ids, dist = index.search(model.encode("text", text), 10)
    replies: dict[int, tuple] = {}

    def ask(i: int) -> None:
        replies[i] = call(url, "/search", {"modality": "text", "features": text[i : i + 1].tolist(), "k": 10})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(text))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(replies) == list(range(len(text)))
    for i, (status, reply) in replies.items():
        assert status == 200
        assert reply["results"] == [{"ids": ids[i].tolist(), "distances": dist[i].tolist()}]


def test_encode_then_search_by_codes(server, trained):
    url, index = server
    data, model, _ = trained
    image = data.query.image[:3]
    status, reply = call(url, "/encode", {"modality": "image", "features": image.tolist()})
    assert status == 200 and reply["nbits"] == 24
    codes = model.encode("image", image)
    assert reply["codes"] == [row.tobytes().hex() for row in codes.data]
    status, found = call(url, "/search", {"codes": reply["codes"], "k": 4})
    assert status == 200
    assert [r["ids"] for r in found["results"]] == index.search(codes, 4)[0].tolist()


def _text(d, rows=1, value=0.0):
    return [[value] * d] * rows


@pytest.mark.parametrize(
    "make_body, message",
    [
        (lambda d: {"modality": "sound", "features": _text(d), "k": 1}, "'modality' must be one of"),
        (lambda d: {"modality": "text", "features": [[0.0, 1.0]], "k": 1}, "text features must be"),
        (lambda d: {"modality": "text", "features": [[1.0] * d, [1.0] * (d - 1)], "k": 1}, "equal-length"),
        (lambda d: {"modality": "text", "features": [], "k": 1}, "non-empty list"),
        (lambda d: {"modality": "text", "features": _text(d, 51), "k": 1}, "at most 50"),
        (lambda d: {"modality": "text", "features": _text(d), "k": 0}, r"'k' must be an integer in \[1, 200\]"),
        (lambda d: {"modality": "text", "features": _text(d), "k": 201}, "'k' must be"),
        (lambda d: {"modality": "text", "features": _text(d), "k": True}, "'k' must be"),
        (lambda d: {"modality": "text", "features": _text(d), "radius": -1}, "'radius' must be"),
        (lambda d: {"modality": "text", "features": _text(d), "k": 2, "radius": 1}, "exactly one of 'k'"),
        (lambda d: {"modality": "text", "features": _text(d)}, "exactly one of 'k'"),
        (lambda d: {"codes": ["zz"], "k": 1}, "hex strings"),
        (lambda d: {"codes": ["00ff"], "k": 1}, "3-byte hex strings for 24-bit"),
        (lambda d: {"codes": ["00ff00"], "modality": "text", "features": _text(d), "k": 1}, "exactly one of 'features'"),
        (lambda d: {"modality": "text", "features": _text(d), "k": 1, "extra": 1}, "unknown field"),
        (lambda d: [1, 2], "must be a JSON object"),
    ],
)
def test_bad_requests_get_400_with_a_reason(server, trained, make_body, message):
    url, _ = server
    status, reply = call(url, "/search", make_body(trained[0].dims["text"]))
    assert status == 400
    assert re.search(message, reply["error"]), reply["error"]


def test_nan_features_not_json_and_wrong_routes(server, trained):
    url, _ = server
    dims = trained[0].dims["text"]
    nan_body = '{"modality": "text", "features": [[NaN' + ", 0" * (dims - 1) + ']], "k": 1}'
    status, reply = call(url, "/search", raw=nan_body.encode())
    assert status == 400 and "NaN" in reply["error"]
    assert call(url, "/search", raw=b"{not json")[0] == 400
    assert call(url, "/nowhere")[0] == 404
    assert call(url, "/search")[0] == 405  # GET on a POST endpoint
    assert call(url, "/health", {"x": 1})[0] == 405


def test_service_refuses_a_model_and_index_of_different_lengths(trained):
    _, model, _ = trained
    with pytest.raises(ValueError, match="24-bit codes but the index holds 16-bit"):
        SearchService(model, HammingIndex(16))


def test_model_folder_resolution(tmp_path, trained):
    _, model, _ = trained
    folder = tmp_path / "run"
    model.save(folder / "weights.npz")
    assert resolve_model_path(folder) == folder / "weights.npz"
    model.save(folder / "model.npz")
    assert resolve_model_path(folder) == folder / "model.npz"
    (folder / "model.npz").unlink()
    model.save(folder / "other.npz")
    with pytest.raises(ValueError, match="exactly one .npz"):
        resolve_model_path(folder)
    with pytest.raises(FileNotFoundError, match="no such model"):
        resolve_model_path(tmp_path / "missing")


@pytest.mark.wiki
def test_cli_index_build_then_serve(tmp_path, wiki_path, monkeypatch):
    monkeypatch.setenv("CMHASH_DATA", str(wiki_path.parent.parent))
    from cmhash.data.protocols import load_dataset

    data = load_dataset("wiki")
    model = linear_model(data.dims, 32)
    model_dir = tmp_path / "run"
    model.save(model_dir / "model.npz")
    out = tmp_path / "wiki-image.index.npz"
    result = CliRunner().invoke(app, ["index", "build", str(model_dir), "--dataset", "wiki", "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = HammingIndex.load(out)
    assert len(index) == len(data.database) and index.nbits == 32
    assert index.info["modality"] == "image" and index.info["dataset_checksum"] == data.checksum()
    np.testing.assert_array_equal(index.codes.data, model.encode("image", data.database.image).data)

    service = load_service(model_dir, out)
    srv = make_server(service, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        status, reply = call(url, "/search", {"modality": "text", "features": data.query.text[:2].tolist(), "k": 5})
        assert status == 200
        assert [r["ids"] for r in reply["results"]] == index.search(model.encode("text", data.query.text[:2]), 5)[0].tolist()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(TIMEOUT)


def test_cli_reports_bad_paths(tmp_path, trained):
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", str(tmp_path / "none.npz"), "--dataset", "wiki", "--out", "x.npz"])
    assert result.exit_code == 2 and "no such model" in " ".join(result.output.split())  # rich wraps lines
    _, model, _ = trained
    model.save(tmp_path / "m.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "m.npz"), "--index", str(bad)])
    assert result.exit_code == 2 and "bad.npz" in "".join(result.output.split())
