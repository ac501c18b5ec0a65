"""The search service: :class:`SearchService` (the logic, plain Python), served over HTTP by a
FastAPI app on uvicorn (``cmhash.serve.app`` / ``cmhash.serve.server``, the ``serve`` extra).
See docs/service.md."""

from cmhash.serve.limits import Limits, ServiceError
from cmhash.serve.service import SearchService, load_service, resolve_model_path
from cmhash.serve.store import ItemStore

RequestError = ServiceError  # the first version's name

__all__ = ["SearchService", "ServiceError", "RequestError", "Limits", "ItemStore", "load_service", "resolve_model_path"]
