"""Import torchvision even when its C++ extension cannot load (a CPU torch with a CUDA torchvision).

The problem: PyPI's ``torchvision==0.28.0`` wheel for Linux is a CUDA build (``0.28.0+cu130``);
its ``_C.so`` links ``libtorch_cuda.so``. Beside the CPU wheel ``torch==2.13.0+cpu`` the
extension fails to load, which torchvision itself tolerates (``torchvision.extension._has_ops()``
is then False and every op that needs C++ raises a clear "Couldn't load custom C++ ops" error).
But ``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` without that check, so ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist`` (pytorch/pytorch#122494 and many
downstream reports). ``open_clip`` imports torchvision, so it fails too.

The guard: only when that exact failure happens and torchvision reports that its extension did
not load, define the *schemas* of those two operators (no kernels) and import again. The models
and transforms cmhash uses are pure torch and work; ``torchvision.ops.nms`` and the other C++
ops still raise torchvision's own error. Nothing changes for a matching torchvision (e.g. from
PyTorch's CPU index, ``--index-url https://download.pytorch.org/whl/cpu``), whose import succeeds
the first time.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

#: the operators torchvision 0.28 registers fake kernels for without checking its extension
UNGUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_SCHEMA_LIBRARY: Any = None  # kept alive: the definitions last as long as this object
_applied = False


def import_torchvision() -> ModuleType:
    """``import torchvision``, with the guard above applied only if the plain import fails that way."""
    global _SCHEMA_LIBRARY, _applied
    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
        extension = sys.modules.get("torchvision.extension")
        if extension is None or extension._has_ops():
            raise  # a different failure: the extension loaded, so the guard would hide a real bug
        first_error = exc
    import torch

    _forget_partial_import()
    _SCHEMA_LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for schema in UNGUARDED_OPS:
        _SCHEMA_LIBRARY.define(schema)
    try:
        import torchvision
    except Exception as exc:
        raise ImportError(
            f"torchvision cannot be imported: {first_error}; its C++ extension did not load (is "
            f"torchvision built for this torch {torch.__version__}?) and the compatibility guard "
            f"of cmhash.features did not help: {type(exc).__name__}: {exc}"
        ) from exc
    _applied = True
    return torchvision


def guard_applied() -> bool:
    """Whether this process imported torchvision through the guard (recorded in provenance)."""
    return _applied


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
