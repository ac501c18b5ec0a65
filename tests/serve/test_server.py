"""Today's read-only form (`cmhash serve --model M --index I`) and the HTTP-level limits, against a
real server process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from cmhash.cli import app
from cmhash.data.synthetic import make_synthetic
from cmhash.index import HammingIndex
from cmhash.serve import SearchService, ServiceError, load_service, resolve_model_path
from cmhash.serve.limits import Limits

from serve_process import linear_model, running

httpx = pytest.importorskip("httpx", reason="the service needs the serve extra: pip install 'cmhash[serve]'")
pytest.importorskip("fastapi", reason="the service needs the serve extra")

TIMEOUT = 20  # seconds per request: a hung server fails the test instead of blocking it


@pytest.fixture(scope="module")
def trained():
    data = make_synthetic(600, seed=1)
    model = linear_model(data.dims, 24)
    db_codes = model.encode("image", data.database.image)
    return data, model, db_codes


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    _, model, db_codes = trained
    folder = tmp_path_factory.mktemp("legacy")
    model.save(folder / "model.npz")
    index = HammingIndex.from_codes(db_codes, ids=np.arange(len(db_codes)) + 1000, info={"modality": "image"})
    index.save(folder / "index.npz")
    return folder, index


@pytest.fixture(scope="module")
def server(files):
    folder, index = files
    args = ["--model", str(folder / "model.npz"), "--index", str(folder / "index.npz"), "--max-queries", "50",
            "--max-k", "200", "--max-body-bytes", "200000", "--max-json-depth", "20", "--header-timeout", "1",
            "--request-timeout", "2"]
    with running(args) as srv:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
            yield client, index, srv


def post(client, path, body=None, raw=None):
    reply = client.post(path, content=raw if raw is not None else json.dumps(body).encode(),
                        headers={"Content-Type": "application/json"})
    return reply.status_code, reply.json()


def test_health_and_info(server):
    client, index, _ = server
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/health?verbose=1").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"]["method"] == "cca-itq" and info["model"]["bits"] == 24
    assert info["index"]["size"] == len(index) and info["index"]["info"] == {"modality": "image"}
    assert info["writable"] is False and info["limits"]["max_k"] == 200


def test_search_by_features_and_codes_equals_the_index(server, trained):
    client, index, _ = server
    data, model, _ = trained
    text = data.query.text[:5]
    status, reply = post(client, "/search", {"modality": "text", "features": text.tolist(), "k": 15})
    assert status == 200
    ids, dist = index.search(model.encode("text", text), 15)
    assert reply["results"] == [{"ids": i.tolist(), "distances": d.tolist()} for i, d in zip(ids, dist)]
    assert all(i >= 1000 for r in reply["results"] for i in r["ids"])  # external ids, not positions

    status, reply = post(client, "/search", {"modality": "text", "features": text.tolist(), "radius": 4})
    assert status == 200
    for got, (ids, dist) in zip(reply["results"], index.range_search(model.encode("text", text), 4)):
        assert got == {"ids": ids.tolist(), "distances": dist.tolist()}

    # today's code form: {"codes": [...], "k": 10}
    image = data.query.image[:3]
    status, enc = post(client, "/encode", {"modality": "image", "features": image.tolist()})
    codes = model.encode("image", image)
    assert status == 200 and enc == {"nbits": 24, "codes": [row.tobytes().hex() for row in codes.data]}
    status, found = post(client, "/search", {"codes": enc["codes"], "k": 10})
    ids, dist = index.search(codes, 10)
    assert status == 200 and [r["ids"] for r in found["results"]] == ids.tolist()


def test_concurrent_requests_on_kept_alive_connections_get_their_own_answers(server, trained):
    client, index, srv = server
    data, model, _ = trained
    text = data.query.text[:16]
    ids, dist = index.search(model.encode("text", text), 10)
    replies: dict[int, tuple] = {}

    def ask(i: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as own:
            replies[i] = [post(own, "/search", {"modality": "text", "features": text[i : i + 1].tolist(), "k": 10})
                          for _ in range(3)]  # three requests on one kept-alive connection

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(text))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(replies) == list(range(len(text)))
    for i, answers in replies.items():
        for status, reply in answers:
            assert status == 200
            assert reply["results"] == [{"ids": ids[i].tolist(), "distances": dist[i].tolist()}]


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
        (lambda d: {"codes": ["00ff00"], "target": "text", "k": 1}, "'target' must be one of"),
        (lambda d: {"modality": "text", "features": _text(d), "k": 1, "extra": 1}, "unknown field"),
        (lambda d: [1, 2], "must be a JSON object"),
    ],
)
def test_bad_requests_get_422_with_a_reason(server, trained, make_body, message):
    client, _, _ = server
    status, reply = post(client, "/search", make_body(trained[0].dims["text"]))
    assert status == 422 and reply["code"] == "invalid_request" and reply["status"] == 422
    assert re.search(message, reply["error"]), reply["error"]


def test_nan_bad_json_wrong_routes_and_methods_answer_json(server, trained):
    client, _, _ = server
    dims = trained[0].dims["text"]
    nan_body = '{"modality": "text", "features": [[NaN' + ", 0" * (dims - 1) + ']], "k": 1}'
    status, reply = post(client, "/search", raw=nan_body.encode())
    assert status == 422 and "NaN" in reply["error"]
    assert post(client, "/search", raw=b"{not json") == (400, post(client, "/search", raw=b"{not json")[1])
    assert post(client, "/search", raw=b"{not json")[1]["code"] == "invalid_json"
    for method, path, status, code in [("GET", "/nowhere", 404, "not_found"), ("GET", "/search", 405, "method_not_allowed"),
                                       ("POST", "/health", 405, "method_not_allowed"),
                                       ("DELETE", "/search", 405, "method_not_allowed"),
                                       ("PUT", "/search", 405, "method_not_allowed"),
                                       ("POST", "/items", 405, "read_only"), ("GET", "/items/3", 405, "read_only")]:
        reply = client.request(method, path, content=b"{}")
        assert reply.status_code == status and reply.headers["content-type"] == "application/json", (method, path)
        assert reply.json()["code"] == code and reply.json()["status"] == status


def test_body_size_and_json_depth_limits(server):
    client, _, srv = server
    # declared too large: refused before reading
    status, reply = post(client, "/search", raw=b"[" + b" " * 300_000 + b"]")
    assert status == 413 and reply["code"] == "too_large"
    # too large without a Content-Length (chunked): counted while received
    reply = client.post("/search", content=iter([b"[" + b" " * 100_000] * 3 + [b"]"]))
    assert reply.status_code == 413 and reply.json()["code"] == "too_large"
    # nested 100k deep: refused with 400 JSON, the server keeps serving
    status, reply = post(client, "/search", raw=b"[" * 100_000 + b"]" * 100_000)  # 200,000 bytes: at the limit
    assert status == 400 and reply["code"] == "too_deep", reply
    status, reply = post(client, "/search", raw=b'{"k": ' + b"[" * 21 + b"]" * 21 + b"}")
    assert status == 400 and reply["code"] == "too_deep"
    assert client.get("/health").status_code == 200


def _raw(url: str, chunks: list[bytes], pause: float = 0.0, read_timeout: float = 15) -> bytes:
    """Send ``chunks`` on a fresh socket, ``pause`` seconds apart, and read the reply until closed."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        try:
            for i, chunk in enumerate(chunks):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection on us: read what it said
        out = []
        try:
            while chunk := sock.recv(65536):
                out.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
        return b"".join(out)


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_malformed_http_and_slow_clients_get_json_errors(server):
    _, _, srv = server
    # negative Content-Length: malformed HTTP, 400 JSON (was 413)
    status, body = _status_and_json(_raw(srv.url, [b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"]))
    assert status == 400 and body["code"] == "bad_http"
    # headers trickled a byte per 0.3 s: cut off after the 1 s header timeout with 408
    t0 = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    status, body = _status_and_json(_raw(srv.url, [head[i : i + 1] for i in range(len(head))], pause=0.3))
    assert status == 408 and body["code"] == "timeout" and time.monotonic() - t0 < 8
    # fast headers, then a body trickled a byte per 0.3 s: cut off by the 2 s whole-request timeout
    body_bytes = b'{"codes": ["00ff00"], "k": 1}' + b" " * 11
    head = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    t0 = time.monotonic()
    status, body = _status_and_json(_raw(srv.url, [head] + [body_bytes[i : i + 1] for i in range(40)], pause=0.3))
    assert status == 408 and body["code"] == "timeout" and time.monotonic() - t0 < 8


def test_keep_alive_http11_two_requests_on_one_socket(server):
    _, _, srv = server
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection after {reply!r}"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200") and b"connection: close" not in reply.lower()


def test_openapi_and_metrics(server):
    client, _, _ = server
    spec = client.get("/openapi.json").json()
    assert {"/search", "/encode", "/items", "/items/{item_id}", "/items/delete", "/health", "/info"} <= set(spec["paths"])
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SearchRequest"}
    assert "k" in spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert client.get("/docs").status_code == 200
    before = client.get("/metrics").text
    client.get("/nowhere")
    after = client.get("/metrics").text
    count = lambda text, pat: int(re.search(pat + r" (\d+)", text).group(1)) if re.search(pat, text) else 0  # noqa: E731
    assert count(after, 'cmhash_requests_total{method="GET",route="other",status="404"}') == \
        count(before, 'cmhash_requests_total{method="GET",route="other",status="404"}') + 1
    assert count(after, "cmhash_errors_total") > count(before, "cmhash_errors_total")
    assert "cmhash_request_seconds_bucket" in after


def test_heavy_requests_are_bounded(trained):
    _, model, db_codes = trained
    service = SearchService(model, HammingIndex.from_codes(db_codes), limits=Limits(max_heavy=1, heavy_results=10,
                                                                                    request_timeout=0.2))
    codes = [db_codes.data[0].tobytes().hex()] * 4
    assert len(service.search({"codes": codes, "k": 5})["results"]) == 4  # heavy (20 > 10), a slot is free
    service._heavy.acquire()  # another heavy request is running
    try:
        with pytest.raises(ServiceError) as err:
            service.search({"codes": codes, "k": 5})
        assert err.value.status == 503 and err.value.code == "busy"
        assert len(service.search({"codes": codes[:1], "k": 5})["results"]) == 1  # small requests still run
    finally:
        service._heavy.release()
    nice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # noqa: E731
    base = nice()
    assert service._run(False, nice) == base and service._run(True, nice) == min(19, base + 10)  # heavy: lower priority
    too_many = SearchService(model, HammingIndex.from_codes(db_codes), max_results=30)
    with pytest.raises(ServiceError, match="max_results"):
        too_many.search({"codes": codes, "k": 10})
    with pytest.raises(ServiceError, match="over 30 hits"):
        too_many.search({"codes": codes, "radius": 24})


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
    assert service.search({"modality": "text", "features": data.query.text[:2].tolist(), "k": 5})["results"][0]["ids"] == \
        index.search(model.encode("text", data.query.text[:2]), 5)[0][0].tolist()
    with running(["--model", str(model_dir), "--index", str(out)]) as srv:
        reply = httpx.post(srv.url + "/search", json={"modality": "text", "features": data.query.text[:2].tolist(), "k": 5},
                           timeout=TIMEOUT)
        assert reply.status_code == 200
        assert [r["ids"] for r in reply.json()["results"]] == \
            index.search(model.encode("text", data.query.text[:2]), 5)[0].tolist()


def test_cli_reports_bad_paths_and_refuses_an_open_host_without_keys(tmp_path, trained):
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", str(tmp_path / "none.npz"), "--dataset", "wiki", "--out", "x.npz"])
    assert result.exit_code == 2 and "no such model" in " ".join(result.output.split())  # rich wraps lines
    _, model, db_codes = trained
    model.save(tmp_path / "m.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "m.npz"), "--index", str(bad)])
    assert result.exit_code == 2 and "bad.npz" in "".join(result.output.split())
    HammingIndex.from_codes(db_codes).save(tmp_path / "i.npz")
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "m.npz"), "--index", str(tmp_path / "i.npz"),
                                 "--host", "0.0.0.0"], env={"CMHASH_API_KEYS": ""})
    assert result.exit_code == 2 and "--insecure" in result.output
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "m.npz"), "--index", str(tmp_path / "i.npz"),
                                 "--max-k", "0"])
    assert result.exit_code == 2 and "max_k" in result.output


def test_connections_over_the_cap_get_503_json(files):
    folder, _ = files
    with running(["--model", str(folder / "model.npz"), "--index", str(folder / "index.npz"),
                  "--max-connections", "2"]) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.2)  # the server has accepted both
            status, body = _status_and_json(_raw(srv.url, [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"]))
            assert status == 503 and body["code"] == "too_many_connections"
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
            assert client.get("/health").status_code == 200  # served again once they closed


def test_an_unexpected_error_is_a_500_json_without_internals(trained):
    """In-process (no way to break a real server on purpose): an index whose search fails."""
    from starlette.testclient import TestClient

    from cmhash.serve._mutable import MutableHammingIndex
    from cmhash.serve.app import create_app

    class BrokenIndex(MutableHammingIndex):
        def search(self, query_codes, k):
            raise RuntimeError("secret internal detail")

    _, model, db_codes = trained
    index = BrokenIndex(24)
    index.add(db_codes, list(range(len(db_codes))))
    client = TestClient(create_app(SearchService(model, index)), raise_server_exceptions=False)
    reply = client.post("/search", json={"codes": [db_codes.data[0].tobytes().hex()], "k": 3})
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"error": "internal error (see the server log)", "code": "internal", "status": 500}
    assert client.get("/health").json() == {"status": "ok"}  # still serving


def test_a_read_past_the_request_timeout_is_answered_503_at_the_timeout(trained):
    """In-process: an index whose search takes 3 s, a 1 s request timeout."""
    from starlette.testclient import TestClient

    from cmhash.serve._mutable import MutableHammingIndex
    from cmhash.serve.app import create_app

    class SlowIndex(MutableHammingIndex):
        def search(self, query_codes, k):
            time.sleep(3)
            return super().search(query_codes, k)

    _, model, db_codes = trained
    index = SlowIndex(24)
    index.add(db_codes, list(range(len(db_codes))))
    client = TestClient(create_app(SearchService(model, index, request_timeout=1.0)))
    t0 = time.monotonic()
    reply = client.post("/search", json={"codes": [db_codes.data[0].tobytes().hex()], "k": 3})
    assert reply.status_code == 503 and reply.json()["code"] == "timeout"
    assert time.monotonic() - t0 < 2.5  # answered at the timeout, not when the search ended
