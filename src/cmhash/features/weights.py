"""Where encoder weights come from: a local file, the library's own cache, or an explicit random
initialisation. Nothing is ever downloaded: a weight that is not on disk is an error that says
where it was looked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cmhash.data.protocols import file_sha256

#: the value of ``weights`` that asks for a randomly initialised encoder (tests, smoke runs)
RANDOM = "random"


@dataclass(frozen=True)
class Weights:
    """Resolved weights: the file (None for random init), its sha256, and how it was found."""

    path: Path | None
    sha256: str | None
    origin: str

    def provenance(self) -> dict[str, str | None]:
        return {"weights_file": None if self.path is None else str(self.path),
                "weights_sha256": self.sha256, "weights_origin": self.origin}


def local_weights(path: str | os.PathLike, origin: str) -> Weights:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return Weights(path=path, sha256=file_sha256(path), origin=origin)


def random_weights(seed: int) -> Weights:
    return Weights(path=None, sha256=None, origin=f"randomly initialised (torch seed {seed})")


def check_weights_argument(weights: str | None, encoder: str) -> str:
    if weights is None or not str(weights).strip():
        raise ValueError(
            f"{encoder}: no weights given; pass a weights file, a tag found in the library's cache, "
            f"or '{RANDOM}' for a randomly initialised encoder (features of no use beyond tests)"
        )
    return str(weights)
