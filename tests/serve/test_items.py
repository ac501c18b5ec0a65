"""A writable service (`cmhash serve --store`) in a real process: cross-modal items with payloads, API
keys, restart, and kill -9 in the middle of writes; with the in-memory backend and with
`--backend milvus` (the items in a Milvus Lite collection; its differences are named where checked)."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from cmhash.cli import app
from cmhash.codes import hamming_distances
from cmhash.data.synthetic import make_synthetic
from serve_process import READ_KEY, WRITE_KEY, linear_model, need_backend, running, wait_gone, write_keys

httpx = pytest.importorskip("httpx", reason="the service needs the serve extra: pip install 'cmhash[serve]'")
pytest.importorskip("fastapi", reason="the service needs the serve extra")
from cmhash.client import Client, ClientError  # noqa: E402

TIMEOUT = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("items")
    data = make_synthetic(300, seed=3)
    model = linear_model(data.dims, 16, seed=2)  # 16 bits over 270 items: many distance ties
    model.save(folder / "model.npz")
    return folder, data, model, write_keys(folder / "keys.txt")


def reference(model, image, text, ids, query_text, k):
    """Brute-force cross-modal ranking: text queries against image codes, ties by insertion order."""
    d = hamming_distances(model.encode("text", query_text), model.encode("image", image))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(d, order, axis=1).tolist()


def assert_ranking_rule(hits, ids, dist, k):
    """What Milvus promises (it ranks ties its own way): per query the k smallest distances, the
    same ids below the k-th distance, distinct ids of the k-th distance at it."""
    ids = np.array(ids)
    for hit, row in zip(hits, dist):
        got_ids, got_d = np.array(hit["ids"]), np.array(hit["distances"])
        np.testing.assert_array_equal(got_d, np.sort(row)[:k])
        kth = got_d[-1]
        assert set(got_ids[got_d < kth]) == set(ids[row < kth])
        assert set(got_ids[got_d == kth]) <= set(ids[row == kth]) and len(set(got_ids)) == len(got_ids)


@pytest.mark.parametrize("backend", ["memory", "milvus"])
def test_items_search_payloads_auth_and_restart(setup, backend):
    folder, data, model, keys = setup
    need_backend(backend)
    store = folder / f"store-{backend}.db"  # --backend milvus: a Milvus Lite file holding the items
    db = data.database
    args = ["--model", str(folder / "model.npz"), "--store", str(store), "--api-keys", str(keys), "--log-level", "debug",
            "--backend", backend]
    with running(args) as srv:
        writer, reader, anonymous = Client(srv.url, WRITE_KEY), Client(srv.url, READ_KEY), Client(srv.url)
        items = [{"id": f"doc{i}", "image": db.image[i], "text": db.text[i], "payload": {"n": i}} for i in range(200)]
        assert writer.add_items(items[:150]) == {"added": 150, "replaced": 0}
        assert writer.add_items(items[150:]) == {"added": 50, "replaced": 0}
        # auth: reads need a key once a read key exists; writes need a write key
        for call, status in [(lambda: anonymous.info(), 401), (lambda: reader.add_items(items[:1]), 403),
                             (lambda: Client(srv.url, "x" * 30).info(), 401), (lambda: anonymous.delete_item("doc1"), 401)]:
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.status == status
        assert anonymous.health() == {"status": "ok"}
        with pytest.raises(ClientError) as err:
            writer.add_items(items[3:5])
        assert err.value.status == 409 and "doc3" in err.value.message
        # upsert moves doc0..doc4 to the end with new payloads; doc5 loses its text code; delete doc6..doc9
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
        want_ids, want_d = reference(model, db.image[order], db.text[order], ids, data.query.text[:6], 12)
        hits = reader.search(features=data.query.text[:6], modality="text", k=12)  # target: image (cross-modal)
        dist = hamming_distances(model.encode("text", data.query.text[:6]), model.encode("image", db.image[order]))
        if backend == "milvus":  # Milvus difference: ties within a distance in Milvus's order
            assert_ranking_rule(hits, ids, dist, 12)
            assert "Milvus" in reader.info()["ranking"]
        else:
            assert [h["ids"] for h in hits] == want_ids and [h["distances"] for h in hits] == want_d
        for hit, row in zip(reader.search(features=data.query.text[:2], modality="text", radius=5), dist):
            assert sorted(hit["ids"]) == sorted(np.array(ids)[row <= 5].tolist())
        payload_of = {f"doc{i}": ({"moved": True} if i < 5 else {"n": i} if i != 5 else None) for i in order}
        assert all(h["payloads"] == [payload_of[i] for i in h["ids"]] for h in hits)
        text_hits = reader.search(codes=reader.encode("image", db.image[:2])["codes"], target="text", k=300)
        assert all("doc5" not in h["ids"] and len(h["ids"]) == 196 for h in text_hits)
        info = reader.info()
        assert info["indexes"]["image"]["size"] == 197 and info["indexes"]["text"]["size"] == 196
        assert "cmhash_index_items" in reader.metrics()
        before = reader.search(features=data.query.text[:6], modality="text", k=50)
        for c in (writer, reader, anonymous):
            c.close()
        log = "".join(srv.stderr)
    assert WRITE_KEY not in log and READ_KEY not in log and "x" * 30 not in log  # keys never logged

    with running(args) as srv, Client(srv.url, READ_KEY) as reader:  # rebuilt from the store (milvus: it is the store)
        after = reader.search(features=data.query.text[:6], modality="text", k=50)
        if backend == "milvus":
            assert [h["distances"] for h in after] == [h["distances"] for h in before]
            assert_ranking_rule(after, ids, dist, 50)
        else:
            assert after == before
        assert reader.info()["store"]["items"] == 197
        assert reader.get_item("doc0")["payload"] == {"moved": True}
    if backend == "milvus":
        assert not wait_gone(folder), "a Milvus Lite server outlived its stopped service"


def test_writes_need_a_write_key_even_without_keys(setup):
    folder, data, _, _ = setup
    with running(["--store", str(folder / "nokeys.db"), "--bits", "16"]) as srv, Client(srv.url) as client:
        with pytest.raises(ClientError) as err:
            client.add_items([{"id": 1, "image_code": "abcd"}])
        assert err.value.status == 401
        assert client.info()["writable"] is True  # reads open: no read key configured
        with pytest.raises(ClientError, match="no model"):
            client.search(features=data.query.text[:1], modality="text", k=1)
    assert "no write key" in "".join(srv.stderr)


@pytest.mark.parametrize("seed,backend", [(0, "memory"), (1, "memory"), (0, "milvus")])
def test_kill_9_during_writes_loses_no_acknowledged_write_and_applies_no_half_write(setup, tmp_path, seed, backend):
    folder, _, _, keys = setup
    store = tmp_path / "crash.db"
    args = ["--store", str(store), "--bits", "16", "--api-keys", str(keys), "--backend", backend]
    need_backend(backend)  # milvus: the store is a Milvus Lite collection
    rng = random.Random(seed)
    acked: list[int] = []
    sent: list[int] = []
    stop = threading.Event()

    def batch_items(b: int) -> list[dict]:
        # batch b: 25 new items, and (after the first) an upsert of the previous batch's first item
        return [{"id": b * 100 + j, "image_code": f"{(b * 31 + j) % 65536:04x}", "payload": {"batch": b, "j": j}}
                for j in range(25)]

    def write_forever(url: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {WRITE_KEY}"}, timeout=TIMEOUT) as http:
            b = 0
            while not stop.is_set() and b < 2000:
                sent.append(b)
                try:
                    reply = http.post("/items", json={"items": batch_items(b)})
                except httpx.HTTPError:
                    return  # the server died mid-request: this batch is not acknowledged
                if reply.status_code == 200:
                    acked.append(b)
                b += 1

    with running(args) as srv:
        thread = threading.Thread(target=write_forever, args=(srv.url,))
        thread.start()
        deadline = time.monotonic() + 10
        while len(acked) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        srv.kill9()
        stop.set()
        thread.join(TIMEOUT)
    assert acked, "no write was acknowledged before the kill"
    print(f"kill -9 after {len(acked)} acknowledged of {len(sent)} sent batches")

    with running(args) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT,
                                            headers={"Authorization": f"Bearer {READ_KEY}"}) as http:
        everything = http.post("/search", json={"codes": ["0000"], "target": "image", "radius": 16}).json()
        hits = everything["results"][0]
        payload_of = dict(zip(hits["ids"], hits["payloads"]))
        assert len(payload_of) == len(hits["ids"])
        present = {}
        for b in sent:
            want = batch_items(b)
            found = [it["id"] in payload_of for it in want]
            assert len(set(found)) == 1, f"batch {b} half applied: {sum(found)} of 25 items"
            present[b] = found[0]
            if present[b]:
                assert [payload_of[it["id"]] for it in want] == [it["payload"] for it in want]
                got = http.get(f"/items/{want[-1]['id']}").json()
                assert got["image_code"] == want[-1]["image_code"]
        assert all(present[b] for b in acked), "an acknowledged batch is missing after kill -9"
        assert len(payload_of) == 25 * sum(present.values())  # nothing else was stored
        info = http.get("/info").json()
        assert info["indexes"]["image"]["size"] == len(payload_of) == info["store"]["items"]
    if backend == "milvus":
        assert not wait_gone(tmp_path), "a Milvus Lite server outlived its killed or stopped service"


def test_cli_search_and_encode_local_and_remote(setup, tmp_path):
    folder, data, model, keys = setup
    runner = CliRunner()
    index_path = tmp_path / "index.npz"
    from cmhash.index import HammingIndex

    HammingIndex.from_codes(model.encode("image", data.database.image), info={"modality": "image"}).save(index_path)
    feats = tmp_path / "q.npy"
    np.save(feats, data.query.text[:3])
    local = runner.invoke(app, ["search", "--model", str(folder / "model.npz"), "--index", str(index_path),
                                "--features", str(feats), "--modality", "text", "--k", "5"])
    assert local.exit_code == 0, local.output
    import json

    ids, dist = HammingIndex.load(index_path).search(model.encode("text", data.query.text[:3]), 5)
    assert json.loads(local.output)["results"] == [{"ids": i.tolist(), "distances": d.tolist()} for i, d in zip(ids, dist)]
    enc = runner.invoke(app, ["encode", "--model", str(folder / "model.npz"), "--modality", "text", "--features", str(feats)])
    assert enc.exit_code == 0 and json.loads(enc.output)["codes"] == [r.tobytes().hex() for r in
                                                                      model.encode("text", data.query.text[:3]).data]
    with running(["--model", str(folder / "model.npz"), "--index", str(index_path)]) as srv:
        remote = runner.invoke(app, ["search", "--server", srv.url, "--features", str(feats), "--modality", "text",
                                     "--k", "5"])
        assert remote.exit_code == 0, remote.output
        assert json.loads(remote.output) == json.loads(local.output)
        remote_enc = runner.invoke(app, ["encode", "--server", srv.url, "--modality", "text", "--features", str(feats)])
        assert json.loads(remote_enc.output) == json.loads(enc.output)
        bad = runner.invoke(app, ["search", "--server", srv.url, "--codes", "zz", "--k", "5"])
        assert bad.exit_code == 2 and "422 invalid_request" in bad.output
