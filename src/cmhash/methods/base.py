"""The method protocol: ``HashingMethod.fit(train, bits, seed) -> HashModel``.

A method class holds hyper-parameters only; the model it returns holds learned parameters and
encodes features to packed codes. Shared plumbing lives here: hyper-parameter checking and
presets, label hiding for unsupervised methods, timing and the run record, and safe save/load.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cmhash.codes import PackedCodes
from cmhash.data.dataset import MODALITIES, CrossModalDataset
from cmhash.io import arrays_checksum, load_arrays, save_arrays
from cmhash.progress import Progress
from cmhash.record import run_record

FORMAT_VERSION = 1
MAX_BITS = 65_535  # the metrics and the index keep Hamming distances in 16 bits


class HashModel(ABC):
    """A trained hash model: encodes either modality to packed codes; saveable and loadable.

    Subclasses implement :meth:`encode`, :meth:`state` and :meth:`from_state`; they may override
    :meth:`database_codes` (e.g. DCGH evaluates against its learned training codes H).
    """

    method: ClassVar[str] = ""

    def __init__(self, *, bits: int, hparams: dict[str, Any], record: dict[str, Any] | None = None):
        self.bits = int(bits)
        self.hparams = dict(hparams)
        self.record: dict[str, Any] = dict(record or {})

    # ------------------------------------------------------------- encoding
    @abstractmethod
    def encode(self, modality: str, x: np.ndarray) -> PackedCodes:
        """Codes of the rows of ``x`` (features of ``modality``: "image" or "text")."""

    def database_codes(self, modality: str) -> PackedCodes | None:
        """Codes to search against instead of encoding the database (None: encode it)."""
        return None

    @staticmethod
    def check_input(modality: str, x: np.ndarray, dim: "int | dict[str, int]") -> np.ndarray:
        """Validate features given to :meth:`encode` (modality, shape, finiteness).

        ``dim`` is the expected feature dimension, or a mapping modality -> dimension.
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")
        if not isinstance(dim, int):
            dim = dim[modality]
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"{modality} features must be (n x {dim}), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{modality} features contain NaN or inf")
        return x

    # ---------------------------------------------------------- persistence
    @abstractmethod
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON-ready config) that :meth:`from_state` turns back into this model."""

    @classmethod
    @abstractmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], **common: Any) -> "HashModel":
        """Rebuild the model from :meth:`state`'s output (``common``: bits, hparams, record)."""

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a single .npz, atomically; no pickles) with a sha256
        checksum over its arrays and settings that :meth:`load` verifies."""
        arrays, config = self.state()
        meta = {
            "format": "cmhash-model",
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "bits": self.bits,
            "hparams": self.hparams,
            "record": self.record,
            "config": config,
        }
        meta["checksum"] = "sha256:" + arrays_checksum(arrays, meta)
        save_arrays(path, arrays, meta)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> "HashModel":
        """Load any saved model; the method's registry entry picks the model class."""
        from cmhash.methods.registry import get_method_class

        arrays, meta = load_arrays(path)
        if meta.get("format") != "cmhash-model":
            raise ValueError(f"{path}: not a cmhash model file (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported model format version {meta.get('format_version')}")
        recorded = meta.pop("checksum", None)  # files saved before checksums have none: trusted as before
        if recorded is not None and recorded != "sha256:" + arrays_checksum(arrays, meta):
            raise ValueError(
                f"{path}: checksum mismatch: the model's weights or settings changed after it was saved "
                "(edited or corrupt file); retrain or restore the saved file"
            )
        cls = get_method_class(meta["method"]).model_class
        return cls.from_state(
            arrays, meta["config"], bits=meta["bits"], hparams=meta["hparams"], record=meta["record"]
        )


class HashingMethod(ABC):
    """One per paper. Holds hyper-parameters; :meth:`fit` returns a :class:`HashModel`.

    Subclasses set ``name``, ``supervised``, ``model_class``, ``defaults`` (every
    hyper-parameter with its default) and optionally ``presets`` (named overrides, e.g. per
    dataset), and implement :meth:`_fit`.
    """

    name: ClassVar[str] = ""
    supervised: ClassVar[bool] = True
    model_class: ClassVar[type[HashModel]] = HashModel
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, preset: str | None = None, **hparams: Any):
        values = dict(self.defaults)
        if preset is not None:
            key = preset.lower()
            if key not in self.presets:
                raise ValueError(
                    f"method '{self.name}' has no preset '{preset}' (presets: {sorted(self.presets) or 'none'})"
                )
            values.update(self.presets[key])
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"method '{self.name}' got unknown hyper-parameter(s) {unknown}; "
                f"known: {sorted(self.defaults)}"
            )
        values.update(hparams)
        self.preset = preset
        self.hparams: dict[str, Any] = values

    def fit(
        self,
        train: CrossModalDataset,
        bits: int,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> HashModel:
        """Train on ``train`` and return a model that encodes to ``bits``-bit codes.

        Unsupervised methods never see the labels: they receive a copy with the labels removed.
        """
        if not isinstance(train, CrossModalDataset):
            raise TypeError(f"train must be a CrossModalDataset, got {type(train).__name__}")
        if isinstance(bits, bool) or int(bits) != bits or bits < 1:
            raise ValueError(f"bits must be a positive integer, got {bits!r}")
        limit = self.max_bits(train)
        if bits > limit:
            raise ValueError(
                f"{self.name}: {bits} bits cannot be learned from {len(train)} training items "
                f"(at most {limit}: {self.max_bits_reason(train)})"
            )
        data = train if self.supervised else without_labels(train)
        # The run record's data checksum (sha256 over GBs at NUS-WIDE size: seconds) is computed
        # in a thread beside the training: hashlib releases the GIL while it hashes.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmhash-checksum")
        try:
            checksum = pool.submit(train.checksum)
            start = time.perf_counter()
            model = self._fit(data, int(bits), seed=int(seed), progress=progress)
            wall = time.perf_counter() - start
            train_checksum = checksum.result()
        finally:
            pool.shutdown(wait=False)
        model.record = {
            **run_record(
                method=self.name, hparams=self.hparams, bits=bits, seed=seed, dataset=train,
                dataset_checksum=train_checksum, wall_time_s=wall, preset=self.preset,
            ),
            **model.record,
        }
        return model

    @abstractmethod
    def _fit(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        """The method's training: return a fitted model (labels hidden when unsupervised)."""

    def max_bits(self, train: CrossModalDataset) -> int:
        """The longest code worth learning from ``train``, checked before any work is done.

        No method learns more bits than there are training items: the n x bits code matrix has
        rank at most n, so bits beyond the n-th add no independent information on the training
        data (and the method's bits x bits or d x bits matrices may not fit in memory: CCA-ITQ's
        rotation at 10**6 bits is 7.28 TiB). Codes are also capped at :data:`MAX_BITS`. Methods
        with a tighter bound override this and :meth:`max_bits_reason`.
        """
        return min(len(train), MAX_BITS)

    def max_bits_reason(self, train: CrossModalDataset) -> str:
        if len(train) < MAX_BITS:
            return "a code matrix of n items has rank at most n, so further bits add nothing"
        return f"Hamming distances are kept in 16 bits, so codes have at most {MAX_BITS} bits"

    def cost_hint(self, bits: int) -> float:
        """Rough cost of one fit at ``bits``, in deep-baseline epochs on the same data.

        Only used to start a grid's expensive cells first (so two workers finish together);
        never a measurement. Subclasses with very different costs override it.
        """
        return 4.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.hparams.items())})"


def without_labels(data: CrossModalDataset) -> CrossModalDataset:
    """The dataset with every label set to zero (what unsupervised methods are given)."""
    return data.replace(
        labels=np.zeros((len(data), 1), dtype=np.uint8), splits={}, allow_empty_labels=True
    )
