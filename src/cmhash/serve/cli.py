"""``cmhash serve``, ``cmhash search`` and ``cmhash encode`` (registered in cmhash/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from cmhash.serve.limits import Limits

_D = Limits()


def _fail(message: str) -> None:
    from cmhash.cli import fail  # the CLI's one error line (cmhash.cli imports this module at its end)

    fail(message)


def serve_cmd(
    model: Optional[str] = typer.Option(None, help="saved model file, or a folder holding model.npz (encodes features)"),
    index: Optional[str] = typer.Option(None, help="read-only: an index file written by `cmhash index build`"),
    store: Optional[str] = typer.Option(None, help="writable: the SQLite item store (created when missing)"),
    bits: Optional[int] = typer.Option(None, help="code length of a --store without --model"),
    backend: str = typer.Option("memory", help="index of a --store: memory (O(1) writes), hamming (HammingIndex) or "
                                "milvus (the store is a Milvus collection: --store is a .db file or http://host:19530)"),
    collection: str = typer.Option("cmhash_items", help="--backend milvus: the collection holding the items"),
    milvus_token: Optional[str] = typer.Option(None, envvar="CMHASH_MILVUS_TOKEN", help="--backend milvus: server token"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on (0: any free port)"),
    api_keys: Optional[str] = typer.Option(None, help="file of 'read KEY' / 'write KEY' lines (else $CMHASH_API_KEYS)"),
    insecure: bool = typer.Option(False, help="allow a non-loopback --host without API keys"),
    max_queries: int = typer.Option(_D.max_queries, help="queries per search/encode request"),
    max_k: int = typer.Option(_D.max_k, help="largest k of a top-k search"),
    max_results: int = typer.Option(_D.max_results, help="hits per request (queries x k, or radius hits)"),
    max_items: int = typer.Option(_D.max_items, help="items per write request"),
    max_body_bytes: int = typer.Option(_D.max_body_bytes, help="request body size in bytes"),
    max_json_depth: int = typer.Option(_D.max_json_depth, help="nesting depth of a JSON body"),
    heavy_results: int = typer.Option(_D.heavy_results, help="a request that may return more hits is heavy"),
    max_heavy: int = typer.Option(_D.max_heavy, help="heavy requests running at once"),
    request_timeout: float = typer.Option(_D.request_timeout, help="seconds for a whole request"),
    header_timeout: float = typer.Option(_D.header_timeout, help="seconds to receive a request's headers"),
    keep_alive: float = typer.Option(_D.keep_alive, help="seconds an idle keep-alive connection stays open"),
    max_connections: int = typer.Option(_D.max_connections, help="open connections (more get 503)"),
    worker_threads: int = typer.Option(_D.worker_threads, help="threads doing requests' work"),
    log_level: str = typer.Option("warning", help="uvicorn log level"),
) -> None:
    """Serve the search API over HTTP/1.1 until interrupted (docs/service.md)."""
    from cmhash.cli import _check_port

    _check_port(port)
    try:
        from cmhash.serve.server import serve
    except ImportError as exc:
        _fail(f"the service needs the serve extra (pip install 'cmhash[serve]'): {exc}")
    from cmhash.index import HammingIndex
    from cmhash.methods.base import HashModel
    from cmhash.serve.auth import ApiKeys
    from cmhash.serve.service import SearchService, resolve_model_path

    if (index is None) == (store is None):
        _fail("give exactly one of --index FILE (read-only) or --store FILE (writable items)")
    try:
        limits = Limits(max_queries=max_queries, max_k=max_k, max_results=max_results, max_items=max_items,
                        max_body_bytes=max_body_bytes, max_json_depth=max_json_depth, heavy_results=heavy_results,
                        max_heavy=max_heavy, request_timeout=request_timeout, header_timeout=header_timeout,
                        keep_alive=keep_alive, max_connections=max_connections,
                        worker_threads=worker_threads)
        keys = ApiKeys.from_file(api_keys) if api_keys else ApiKeys.from_env()
        hash_model = HashModel.load(resolve_model_path(model)) if model else None
        if index is not None:
            if hash_model is None:
                _fail("--index needs --model")
            service = SearchService(hash_model, HammingIndex.load(index), limits=limits)
        elif backend == "milvus":
            from cmhash.serve.milvus_store import open_milvus_service

            service = open_milvus_service(store, collection, model=hash_model, nbits=bits, token=milvus_token,
                                          limits=limits)
        else:
            service = SearchService.open_store(store, model=hash_model, nbits=bits, limits=limits,
                                               index_factory=backend)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:  # RuntimeError: MilvusError
        _fail(str(exc))
    if service.writable and (keys is None or not keys.any_write):
        typer.echo("warning: no write key configured: writes (POST /items, DELETE) will be refused", err=True)

    def ready(bound_host: str, bound_port: int) -> None:
        typer.echo(f"serving {index or store} on http://{bound_host}:{bound_port} (Ctrl-C to stop)")
        sys.stdout.flush()

    try:
        serve(service, host, port, api_keys=keys, insecure=insecure, log_level=log_level, on_ready=ready)
    except (ValueError, OSError) as exc:
        _fail(str(exc))


def _features(path: str) -> np.ndarray:
    """Features from a .npy file, or a JSON file/inline JSON of a list of rows."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            x = np.load(p, allow_pickle=False)
        else:
            x = np.asarray(json.loads(p.read_text() if p.exists() else path), dtype=np.float64)
    except (OSError, ValueError) as exc:
        _fail(f"--features {path}: expected a .npy file or a JSON list of rows ({exc})")
    return x[None, :] if x.ndim == 1 else x


def _local_service(model: Optional[str], index: Optional[str]) -> Any:
    from cmhash.index import HammingIndex
    from cmhash.methods.base import HashModel
    from cmhash.serve.service import SearchService, resolve_model_path

    if model is None:
        _fail("give --server URL, or --model (and --index for search) to work on local files")
    hash_model = HashModel.load(resolve_model_path(model))
    if index is None:
        from cmhash.serve._mutable import MutableHammingIndex

        return SearchService(hash_model, MutableHammingIndex(hash_model.bits))
    return SearchService(hash_model, HammingIndex.load(index))


def _run(server: Optional[str], api_key: Optional[str], remote: Any, local: Any) -> None:
    from cmhash.serve.limits import ServiceError

    try:
        if server:
            from cmhash.client import Client, ClientError

            with Client(server, api_key) as client:
                try:
                    out = remote(client)
                except ClientError as exc:
                    _fail(str(exc))
        else:
            out = local()
    except ServiceError as exc:
        _fail(exc.message)
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(out))


def search_cmd(
    server: Optional[str] = typer.Option(None, help="URL of a running `cmhash serve` (else --model/--index)"),
    model: Optional[str] = typer.Option(None, help="local: saved model file or folder"),
    index: Optional[str] = typer.Option(None, help="local: index file"),
    features: Optional[str] = typer.Option(None, help=".npy or JSON rows of query features"),
    modality: Optional[str] = typer.Option(None, help="modality of --features (image or text)"),
    codes: Optional[str] = typer.Option(None, help="comma-separated hex codes (instead of --features)"),
    k: Optional[int] = typer.Option(None, help="top-k search"),
    radius: Optional[int] = typer.Option(None, help="Hamming-ball search"),
    target: Optional[str] = typer.Option(None, help="modality to search (server with a store)"),
    api_key: Optional[str] = typer.Option(None, envvar="CMHASH_API_KEY", help="read key ($CMHASH_API_KEY)"),
) -> None:
    """Search a running server or a saved model + index; prints the JSON results."""
    request: dict[str, Any] = {}
    if features is not None:
        request.update(features=_features(features).tolist(), modality=modality)
    if codes is not None:
        request["codes"] = [c.strip() for c in codes.split(",") if c.strip()]
    for name, value in (("k", k), ("radius", radius), ("target", target)):
        if value is not None:
            request[name] = value
    _run(server, api_key,
         lambda c: {"results": c.search(**request)},
         lambda: _local_service(model, index).search(request))


def encode_cmd(
    modality: str = typer.Option(..., help="image or text"),
    features: str = typer.Option(..., help=".npy or JSON rows of features"),
    server: Optional[str] = typer.Option(None, help="URL of a running `cmhash serve` (else --model)"),
    model: Optional[str] = typer.Option(None, help="local: saved model file or folder"),
    api_key: Optional[str] = typer.Option(None, envvar="CMHASH_API_KEY", help="read key ($CMHASH_API_KEY)"),
) -> None:
    """Encode features into packed codes (hex) with a running server or a saved model."""
    x = _features(features)
    _run(server, api_key, lambda c: c.encode(modality, x),
         lambda: _local_service(model, None).encode({"modality": modality, "features": x.tolist()}))


def register(app: typer.Typer) -> None:
    """Add serve / search / encode to the main CLI."""
    app.command("serve")(serve_cmd)
    app.command("search")(search_cmd)
    app.command("encode")(encode_cmd)
