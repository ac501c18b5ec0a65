"""One registry of methods: ``get_method(name, **hparams)``, ``list_methods()``.

Built-in methods are imported on first use (so DCGH and the core never import torch);
``register_method`` adds others and refuses a name that is already taken.
"""

from __future__ import annotations

import importlib
from typing import Any

from cmhash.methods.base import HashingMethod

# name -> module that defines (and registers) it; imported lazily.
_BUILTIN: dict[str, str] = {
    "cca-itq": "cmhash.methods.cca_itq",
    "dcgh": "cmhash.methods.dcgh",
    "deep-baseline": "cmhash.methods.deep_baseline",
    "idgh": "cmhash.methods.idgh",
    "dghdgh": "cmhash.methods.dghdgh",
    "demo": "cmhash.methods.demo",
    "hint": "cmhash.methods.hint",
}

_REGISTRY: dict[str, type[HashingMethod]] = {}


def register_method(cls: type[HashingMethod]) -> type[HashingMethod]:
    """Class decorator: register a :class:`HashingMethod` under its ``name``."""
    name = cls.name.lower()
    if not name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a method named '{name}' is already registered ({_REGISTRY[name].__name__})")
    if name in _BUILTIN and cls.__module__ != _BUILTIN[name]:
        raise ValueError(f"a method named '{name}' is already registered (built in, {_BUILTIN[name]})")
    _REGISTRY[name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of every known method, built-in or registered."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_method_class(name: str) -> type[HashingMethod]:
    key = name.lower()
    if key not in _REGISTRY and key in _BUILTIN:
        importlib.import_module(_BUILTIN[key])
    if key not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; known methods: {', '.join(list_methods())}")
    return _REGISTRY[key]


def get_method(name: str, preset: str | None = None, **hparams: Any) -> HashingMethod:
    """An instance of method ``name`` with ``hparams`` over its defaults (and ``preset``)."""
    return get_method_class(name)(preset=preset, **hparams)
