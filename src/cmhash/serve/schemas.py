"""Request and reply shapes for the OpenAPI document (/docs, /openapi.json).

These pydantic models describe the API; the checks themselves live in :mod:`cmhash.serve.service`
(they depend on the running service's limits and code length, which a static schema cannot know).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field

Modality = Literal["image", "text"]
ItemId = Union[int, str]


class Health(BaseModel):
    status: Literal["ok"]


class Error(BaseModel):
    """The shape of every error reply."""

    error: str = Field(description="what was wrong, naming the field or limit")
    code: str = Field(description="stable machine-readable code, e.g. invalid_request, too_large, unauthorized")
    status: int


class EncodeRequest(BaseModel):
    modality: Modality
    features: list[list[float]] = Field(description="one row of features per query")


class EncodeResponse(BaseModel):
    nbits: int
    codes: list[str] = Field(description="packed codes as hex strings")


class SearchRequest(BaseModel):
    modality: Optional[Modality] = Field(None, description="modality of 'features' (not needed with 'codes')")
    features: Optional[list[list[float]]] = Field(None, description="query features (give these or 'codes')")
    codes: Optional[list[str]] = Field(None, description="query codes as hex strings (as /encode returns)")
    target: Optional[Modality] = Field(None, description="modality to search; default: the only index, or the "
                                                         "other modality than the query features'")
    k: Optional[int] = Field(None, ge=1, description="top-k search (give k or radius)")
    radius: Optional[int] = Field(None, ge=0, description="every item within this Hamming distance")
    payloads: Optional[bool] = Field(None, description="return each hit's payload (default: true for a store)")


class SearchHits(BaseModel):
    ids: list[ItemId]
    distances: list[int]
    payloads: Optional[list[Optional[dict[str, Any]]]] = None


class SearchResponse(BaseModel):
    results: list[SearchHits] = Field(description="one entry per query, hits ranked by distance then insertion order")


class ItemIn(BaseModel):
    id: ItemId
    image: Optional[list[float]] = Field(None, description="image features (encoded by the model)")
    text: Optional[list[float]] = Field(None, description="text features (encoded by the model)")
    image_code: Optional[str] = Field(None, description="packed image code as hex (instead of features)")
    text_code: Optional[str] = Field(None, description="packed text code as hex (instead of features)")
    payload: Optional[dict[str, Any]] = Field(None, description="JSON object returned with hits")


class ItemsRequest(BaseModel):
    items: list[ItemIn]
    upsert: bool = Field(False, description="replace items whose id is stored (else such an id is a 409)")


class ItemsResponse(BaseModel):
    added: int
    replaced: int


class DeleteRequest(BaseModel):
    ids: list[ItemId]


class DeleteResponse(BaseModel):
    removed: int


class ItemResponse(BaseModel):
    id: ItemId
    image_code: Optional[str]
    text_code: Optional[str]
    payload: Optional[dict[str, Any]]


REQUESTS = (EncodeRequest, SearchRequest, ItemsRequest, DeleteRequest, Error)


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body has the shape of ``model``."""
    errors = {str(s): {"description": d, "content": {"application/json": {"schema": _ref(Error)}}}
              for s, d in [(400, "not JSON, or nested too deep"), (401, "no or unknown key"), (403, "read key on a write"),
                           (413, "body too large"), (422, "invalid request"), (503, "busy or timed out")]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}},
            "responses": errors}


def components() -> dict[str, Any]:
    """The schemas ``body`` refers to, for the OpenAPI document's components."""
    out: dict[str, Any] = {}
    for model in REQUESTS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}
