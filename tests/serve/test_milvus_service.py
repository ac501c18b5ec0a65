"""`cmhash serve --backend milvus`: the service's API over a Milvus Lite collection in a real process
(the collection is the durable store and the indexes). The same requests as test_items.py; what
differs with Milvus is named where it is checked: ties within a distance are ranked by Milvus, so
hits are compared under the ranking rule of tests/index/test_backends.py (same distances, same id
sets below the k-th distance, a valid subset at it), and an upsert replaces an item in place."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from cmhash.codes import hamming_distances
from cmhash.data.synthetic import make_synthetic
from serve_process import READ_KEY, WRITE_KEY, linear_model, running, wait_gone, write_keys

pytest.importorskip("httpx", reason="the service needs the serve extra: pip install 'cmhash[serve]'")
pytest.importorskip("fastapi", reason="the service needs the serve extra")
if os.environ.get("CI", "").lower() == "true":
    import milvus_lite  # noqa: F401  (CI installs the milvus extra: a missing one must fail, not skip)
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")
from cmhash.client import Client, ClientError  # noqa: E402

TIMEOUT = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("milvus-items")
    data = make_synthetic(300, seed=3)
    model = linear_model(data.dims, 16, seed=2)  # 16 bits over 270 items: many distance ties
    model.save(folder / "model.npz")
    yield folder, data, model, write_keys(folder / "keys.txt")
    left = wait_gone(folder)
    for pid in left:  # never expected: stop them before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Milvus Lite servers left running: {left}"


def reference(model, image, text, ids, query_text):
    """Per query: (ids, distances) of every image item, for the ranking rule."""
    d = hamming_distances(model.encode("text", query_text), model.encode("image", image))
    return [(np.array(ids), row) for row in d]


def assert_valid_hits(hits, ref, k):
    """Milvus's promise: the k smallest distances; the same ids below the k-th; a valid subset at it."""
    for hit, (ids, dist) in zip(hits, ref):
        got_ids, got_d = np.array(hit["ids"]), np.array(hit["distances"])
        np.testing.assert_array_equal(got_d, np.sort(dist)[:k])
        kth = got_d[-1]
        assert set(got_ids[got_d < kth]) == set(ids[dist < kth])
        assert set(got_ids[got_d == kth]) <= set(ids[dist == kth]) and len(set(got_ids)) == len(got_ids)


def test_items_search_payloads_auth_and_restart_on_milvus(setup):
    folder, data, model, keys = setup
    uri = folder / "items.db"
    db = data.database
    args = ["--model", str(folder / "model.npz"), "--store", str(uri), "--backend", "milvus",
            "--collection", "docs", "--api-keys", str(keys)]
    with running(args) as srv:
        writer, reader, anonymous = Client(srv.url, WRITE_KEY), Client(srv.url, READ_KEY), Client(srv.url)
        items = [{"id": f"doc{i}", "image": db.image[i], "text": db.text[i], "payload": {"n": i}} for i in range(200)]
        assert writer.add_items(items[:150]) == {"added": 150, "replaced": 0}
        assert writer.add_items(items[150:]) == {"added": 50, "replaced": 0}
        for call, status in [(lambda: anonymous.info(), 401), (lambda: reader.add_items(items[:1]), 403)]:
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.status == status
        with pytest.raises(ClientError) as err:
            writer.add_items(items[3:5])
        assert err.value.status == 409 and "doc3" in err.value.message
        moved = [{**it, "payload": {"moved": True}} for it in items[:5]]
        assert writer.add_items(moved + [{"id": "doc5", "image": db.image[5]}], upsert=True) == {"added": 0, "replaced": 6}
        assert writer.delete_items(["doc6", "doc7", "nope"]) == {"removed": 2}
        assert writer.delete_item("doc8") == {"removed": 1}
        with pytest.raises(ClientError) as err:
            writer.delete_item("doc8")
        assert err.value.status == 404
        got = reader.get_item("doc5")
        assert got["text_code"] is None and got["payload"] is None
        assert got["image_code"] == model.encode("image", db.image[5:6]).data[0].tobytes().hex()

        order = [i for i in range(5, 200) if i not in (6, 7, 8)] + list(range(5))
        ids = [f"doc{i}" for i in order]
        ref = reference(model, db.image[order], db.text[order], ids, data.query.text[:6])
        hits = reader.search(features=data.query.text[:6], modality="text", k=12)  # target: image (cross-modal)
        assert_valid_hits(hits, ref, 12)  # Milvus difference: tie order is Milvus's
        payload_of = {f"doc{i}": ({"moved": True} if i < 5 else {"n": i} if i != 5 else None) for i in order}
        assert all(h["payloads"] == [payload_of[i] for i in h["ids"]] for h in hits)
        radius = reader.search(features=data.query.text[:2], modality="text", radius=5)
        for hit, (r_ids, r_d) in zip(radius, ref[:2]):
            assert sorted(hit["ids"]) == sorted(r_ids[r_d <= 5].tolist())
        text_hits = reader.search(codes=reader.encode("image", db.image[:2])["codes"], target="text", k=300)
        assert all("doc5" not in h["ids"] and len(h["ids"]) == 196 for h in text_hits)
        info = reader.info()
        assert info["indexes"]["image"]["size"] == 197 and info["indexes"]["text"]["size"] == 196
        assert info["store"]["items"] == 197 and info["store"]["backend"] == "milvus"
        assert "Milvus" in info["ranking"]
        before = reader.search(features=data.query.text[:6], modality="text", k=50)
        for c in (writer, reader, anonymous):
            c.close()
    assert not wait_gone(folder), "the service left its Milvus Lite server running"

    with running(args) as srv, Client(srv.url, READ_KEY) as reader:  # the collection is the store
        after = reader.search(features=data.query.text[:6], modality="text", k=50)
        assert [h["distances"] for h in after] == [h["distances"] for h in before]
        assert_valid_hits(after, ref, 50)
        assert reader.info()["store"]["items"] == 197
        assert reader.get_item("doc0")["payload"] == {"moved": True}
