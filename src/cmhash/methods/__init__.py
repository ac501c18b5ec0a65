"""Hashing methods: the protocol (base), the registry, and one module per method."""

from cmhash.methods.base import HashingMethod, HashModel
from cmhash.methods.registry import get_method, list_methods, register_method

__all__ = ["HashingMethod", "HashModel", "get_method", "list_methods", "register_method"]
