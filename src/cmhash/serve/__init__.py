"""HTTP search over a saved model and a Hamming index (stdlib http.server; see docs/index.md)."""

from cmhash.serve.app import RequestError, SearchService, load_service, make_server, resolve_model_path

__all__ = ["SearchService", "RequestError", "make_server", "load_service", "resolve_model_path"]
