"""One training loop for every deep hashing method.

A deep method subclasses :class:`DeepHashingMethod` and implements :meth:`~DeepHashingMethod.batch_loss`
(its maths); optional hooks: :meth:`~DeepHashingMethod.setup` (extra modules, own optimisers),
:meth:`~DeepHashingMethod.on_epoch_start` (e.g. a pass over the training set),
:meth:`~DeepHashingMethod.on_epoch_end`, :meth:`~DeepHashingMethod.after_step` (after each batch's
hash-network step, e.g. a generator's own step). Everything else is here:

- per-modality :class:`~cmhash.nn.networks.HashNetworks` (depth/width/dropout from ``hidden``,
  ``dropout``; input standardisation from the fitting data);
- a validation split carved from the training data with the run's seed (never the query set);
  the fitting set is the rest. Every ``eval_every`` epochs the networks are scored by the
  validation mAP@all (mean of I->T and T->I; validation items query the fitting items); the
  best-scoring epoch's weights are kept (ties: the earliest) and training stops after
  ``patience`` evaluations without improvement. ``val_fraction=0`` keeps the last epoch;
- seeded data order, initialisation and sampling (``torch.random.fork_rng``; the caller's global
  RNG state is left untouched), Adam with an optional cosine schedule, CPU or GPU (``device``);
- progress (epoch, losses, validation mAP) through :class:`cmhash.progress.Progress`;
- :class:`DeepHashModel`: sign of the selected networks' outputs, saved as plain arrays;
- ``record["diagnostics"]`` of every run (labels never used): distinct codes and mean |bit mean|
  per modality on the training set (:func:`code_diagnostics`), the selected epoch and how it was
  selected, plus whatever a method puts in ``ctx.state["record"]["diagnostics"]``.

:class:`LossPlugin` is an extra loss with the same hooks that can be attached to any deep method
(e.g. DGHDGH's hard-negative generation on the plain baseline or on IDGH).
"""

from __future__ import annotations

import abc
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cmhash.codes import PackedCodes, pack, sign
from cmhash.data.dataset import MODALITIES, CrossModalDataset
from cmhash.methods.base import HashingMethod, HashModel
from cmhash.metrics.ranking import mean_average_precision
from cmhash.nn.networks import HashNetworks, arrays_to_module, module_to_arrays
from cmhash.progress import Progress, ensure_progress

#: Hyper-parameters shared by every deep method (a subclass adds its own to ``defaults``).
ENGINE_DEFAULTS: dict[str, Any] = {
    "epochs": 60,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "schedule": "cosine",      # "cosine" (annealed to 0 over `epochs`) or "constant"
    "hidden": [512],           # hidden layer widths of each modality's MLP ([] = linear)
    "dropout": 0.1,
    "standardize": True,       # inputs -> (x - mean) / std of the fitting data
    "val_fraction": 0.1,       # share of the training data held out for model selection
    "patience": 10,            # evaluations without improvement before stopping (0 = never)
    "eval_every": 1,           # epochs between validation evaluations
    "device": "cpu",           # "cpu", "cuda", "cuda:N" or "auto"
}

#: The engine defaults of an unsupervised method: no labels to select an epoch on, so no
#: validation split and no early stopping; the last epoch is kept.
UNSUPERVISED_ENGINE_DEFAULTS: dict[str, Any] = {**ENGINE_DEFAULTS, "val_fraction": 0.0, "patience": 0}


# ------------------------------------------------------------------------ the trained model
class DeepHashModel(HashModel):
    """Codes = sign(F_m(x)) of the selected per-modality networks (sign(0) = +1)."""

    def __init__(self, *, networks: HashNetworks, method: str, encode_batch: int = 4096, **common: Any):
        super().__init__(**common)
        self.method = method  # the registry name, so HashModel.load finds this class again
        self.networks = networks.cpu().eval()
        self.encode_batch = int(encode_batch)

    def encode(self, modality: str, x: np.ndarray) -> PackedCodes:
        x = self.check_input(modality, x, self.networks.dims[modality] if modality in MODALITIES else 0)
        u = self.networks.outputs(modality, x.astype(np.float32, copy=False), batch_size=self.encode_batch,
                                  device="cpu")
        return pack(sign(u.numpy()))

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return module_to_arrays(self.networks, "networks"), {
            "method": self.method, "networks": self.networks.config(),
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], **common: Any) -> "DeepHashModel":
        net_cfg = config.get("networks")
        if not isinstance(net_cfg, dict) or "dims" not in net_cfg:
            raise ValueError("deep model file: config lacks the 'networks' description")
        networks = HashNetworks(**net_cfg)
        arrays_to_module(networks, arrays, "networks")
        return cls(networks=networks, method=config["method"], **common)


# --------------------------------------------------------------------- training context
@dataclass
class Batch:
    """One mini-batch of the fitting set, on the training device."""

    index: torch.Tensor   # (B,) long: rows of the fitting set
    image: torch.Tensor   # (B, d_image) float32
    text: torch.Tensor    # (B, d_text) float32
    labels: torch.Tensor  # (B, C) float32 multi-hot

    def features(self, modality: str) -> torch.Tensor:
        return self.image if modality == "image" else self.text


@dataclass
class TrainContext:
    """What a method's hooks see: networks, data, device, epoch, and a scratch ``state`` dict.

    Whatever a method puts in ``state["record"]`` (a JSON-ready dict) is added to the model's
    record under its own keys; its ``state["record"]["diagnostics"]`` (a dict) is merged into the
    engine's ``record["diagnostics"]`` instead (numeric scalars there show in reports as
    ``diag:<name>``).
    """

    networks: HashNetworks
    device: torch.device
    data: dict[str, torch.Tensor]  # "image", "text", "labels" (+ "views") of the fitting set (on device)
    bits: int
    epochs: int
    hparams: dict[str, Any]
    epoch: int = 0
    step: int = 0
    modules: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.data["labels"].shape[1])

    @property
    def n(self) -> int:
        return int(self.data["labels"].shape[0])

    @property
    def progress_fraction(self) -> float:
        """Share of training done at the start of the current epoch, in [0, 1)."""
        return self.epoch / self.epochs

    def add_module(self, name: str, module: nn.Module, *, group: str = "main",
                   lr: float | None = None, weight_decay: float = 0.0) -> nn.Module:
        """Register a method-owned module. ``group="main"`` trains it with the hash networks;
        any other group gets its own Adam optimiser (``lr`` required), stepped by the method
        through :meth:`optimizer_step`."""
        if name in self.modules:
            raise ValueError(f"module '{name}' is already registered")
        if group != "main":
            if lr is None:
                raise ValueError(f"module '{name}': a separate optimiser group needs an lr")
            self.groups.setdefault(group, {"lr": float(lr), "weight_decay": float(weight_decay), "modules": []})
            self.groups[group]["modules"].append(name)
        else:
            self.groups.setdefault("main", {"modules": []})["modules"].append(name)
        module = module.to(self.device)
        self.modules[name] = module
        return module

    def optimizer_step(self, group: str, loss: torch.Tensor) -> None:
        """zero_grad, backward and step of a separate optimiser group (e.g. a generator).

        ``loss`` must not depend on the hash networks' graph (feed the group detached codes).
        """
        if group == "main" or group not in self.optimizers:
            raise ValueError(f"no separate optimiser group '{group}' (groups: {sorted(self.optimizers)})")
        opt = self.optimizers[group]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def relaxed_codes(self, modality: str, *, batch_size: int = 4096) -> torch.Tensor:
        """tanh outputs of the whole fitting set for ``modality``: a gradient-free pass."""
        return torch.tanh(self.networks.outputs(modality, self.data[modality], batch_size=batch_size))


class _Hooks:
    """Hooks shared by methods and plugins (no-ops by default)."""

    def setup(self, ctx: TrainContext) -> None:
        """Create extra modules / buffers (``ctx.add_module``) before the optimisers exist."""

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Called before each epoch's batches (``ctx.epoch`` is set)."""

    def on_epoch_end(self, ctx: TrainContext, logs: dict[str, float]) -> None:
        """Called after each epoch's batches with the epoch-mean batch logs."""

    def after_step(self, ctx: TrainContext) -> None:
        """Called after each batch's hash-network step (e.g. a generator's own step that must
        follow it, or that uses gradients the main backward left in a separate group)."""


class LossPlugin(_Hooks, abc.ABC):
    """An extra loss attachable to any :class:`DeepHashingMethod` (``method.add_plugin``)."""

    name: ClassVar[str] = ""

    def hparams(self) -> dict[str, Any]:
        return {}

    def epoch_cost(self, bits: int) -> float:
        """Rough extra cost per epoch, in deep-baseline epochs (see HashingMethod.cost_hint)."""
        return 0.0

    @abc.abstractmethod
    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """Extra loss on the batch's relaxed codes, added to the method's loss."""


# ------------------------------------------------------------------------- the method base
class DeepHashingMethod(_Hooks, HashingMethod, metaclass=abc.ABCMeta):
    """Base of the deep methods: shared hyper-parameters (:data:`ENGINE_DEFAULTS`) and training."""

    model_class = DeepHashModel
    defaults: ClassVar[dict[str, Any]] = dict(ENGINE_DEFAULTS)

    def __init__(self, preset: str | None = None, **hparams: Any):
        super().__init__(preset=preset, **hparams)
        self.plugins: list[LossPlugin] = []

    #: rough cost of one epoch relative to the deep baseline's (see HashingMethod.cost_hint)
    epoch_cost: ClassVar[float] = 1.0

    def cost_hint(self, bits: int) -> float:
        return int(self.hparams["epochs"]) * (self.epoch_cost + sum(p.epoch_cost(bits) for p in self.plugins))

    def add_plugin(self, plugin: LossPlugin) -> "DeepHashingMethod":
        """Attach an extra loss; its name and hyper-parameters go into ``hparams['plugins']``."""
        if not isinstance(plugin, LossPlugin):
            raise TypeError(f"expected a LossPlugin, got {type(plugin).__name__}")
        self.plugins.append(plugin)
        self.hparams["plugins"] = [{"name": p.name, **p.hparams()} for p in self.plugins]
        return self

    @abc.abstractmethod
    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one batch: ``codes[m]`` = tanh outputs (B x bits) with grad.

        Returns (loss for the hash networks and main-group modules, {name: float} to log).
        """

    # ---------------------------------------------------------------------------- training
    def _check_hparams(self) -> dict[str, Any]:
        h = dict(self.hparams)
        hidden = h["hidden"]
        h["hidden"] = [int(hidden)] if isinstance(hidden, (int, np.integer)) else [int(x) for x in hidden]
        for key, lo in (("epochs", 1), ("batch_size", 2), ("eval_every", 1), ("patience", 0)):
            if int(h[key]) != h[key] or h[key] < lo:
                raise ValueError(f"{self.name}: hyper-parameter '{key}' must be an integer >= {lo}, got {h[key]!r}")
        if not h["lr"] > 0:
            raise ValueError(f"{self.name}: 'lr' must be > 0, got {h['lr']!r}")
        if not 0.0 <= h["val_fraction"] < 1.0:
            raise ValueError(f"{self.name}: 'val_fraction' must be in [0, 1), got {h['val_fraction']!r}")
        if h["schedule"] not in ("cosine", "constant"):
            raise ValueError(f"{self.name}: 'schedule' must be 'cosine' or 'constant', got {h['schedule']!r}")
        return h

    @staticmethod
    def resolve_device(device: str) -> torch.device:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev

    def _fit(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        h = self._check_hparams()
        device = self.resolve_device(h["device"])
        fit_idx, val_idx = split_validation(len(train), h["val_fraction"], seed)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return self._train(train, bits, h, device, fit_idx, val_idx, ensure_progress(progress))

    def _train(self, train: CrossModalDataset, bits: int, h: dict[str, Any], device: torch.device,
               fit_idx: np.ndarray, val_idx: np.ndarray, progress: Progress) -> DeepHashModel:
        networks = HashNetworks(train.dims, bits, h["hidden"], h["dropout"])
        if h["standardize"]:
            for m in MODALITIES:
                x = train.features(m)[fit_idx]
                networks.set_standardization(m, x.mean(axis=0), x.std(axis=0))
        networks.to(device)
        data = {m: torch.as_tensor(train.features(m)[fit_idx], dtype=torch.float32, device=device)
                for m in MODALITIES}
        data["labels"] = torch.as_tensor(train.labels[fit_idx], dtype=torch.float32, device=device)
        if train.views is not None:  # augmented image views (n x M x d), e.g. for DEMO
            data["views"] = torch.as_tensor(train.views[fit_idx], dtype=torch.float32, device=device)
        ctx = TrainContext(networks=networks, device=device, data=data, bits=bits,
                           epochs=int(h["epochs"]), hparams=h)
        hooks: list[_Hooks] = [self, *self.plugins]
        for hook in hooks:
            hook.setup(ctx)
        main_params = list(networks.parameters()) + [
            p for name in ctx.groups.get("main", {}).get("modules", []) for p in ctx.modules[name].parameters()
        ]
        main_opt = torch.optim.Adam(main_params, lr=h["lr"], weight_decay=h["weight_decay"])
        for group, cfg in ctx.groups.items():
            if group != "main":
                params = [p for name in cfg["modules"] for p in ctx.modules[name].parameters()]
                ctx.optimizers[group] = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(main_opt, T_max=ctx.epochs)
                     if h["schedule"] == "cosine" else None)
        validator = _Validator(train, fit_idx, val_idx) if len(val_idx) else None

        n, n_batches = ctx.n, max(1, math.ceil(ctx.n / h["batch_size"]))
        history: list[dict[str, Any]] = []
        best = {"map": -math.inf, "epoch": -1, "state": None}
        stale, train_seconds = 0, 0.0
        progress.start(ctx.epochs, f"{self.name} {bits} bits")
        for epoch in range(ctx.epochs):
            ctx.epoch = epoch
            tick = time.perf_counter()
            for hook in hooks:
                hook.on_epoch_start(ctx)
            networks.train()
            for mod in ctx.modules.values():
                mod.train()
            sums: dict[str, float] = {}
            order = torch.randperm(n).to(device)
            for chunk in torch.tensor_split(order, n_batches):
                if chunk.numel() < 2:
                    continue
                batch = Batch(chunk, data["image"][chunk], data["text"][chunk], data["labels"][chunk])
                codes = {m: torch.tanh(networks(m, batch.features(m))) for m in MODALITIES}
                loss, logs = self.batch_loss(ctx, batch, codes)
                for plugin in self.plugins:
                    extra, extra_logs = plugin.batch_loss(ctx, batch, codes)
                    loss = loss + extra
                    logs = {**logs, **extra_logs}
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.name}: loss became {loss.item()} at epoch {epoch}")
                main_opt.zero_grad(set_to_none=True)
                loss.backward()
                main_opt.step()
                for hook in hooks:
                    hook.after_step(ctx)
                ctx.step += 1
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            if scheduler is not None:
                scheduler.step()
            logs = {k: v / n_batches for k, v in sums.items()}
            for hook in hooks:
                hook.on_epoch_end(ctx, logs)
            train_seconds += time.perf_counter() - tick
            entry: dict[str, Any] = {"epoch": epoch, **logs}
            evaluate_now = validator is not None and ((epoch + 1) % h["eval_every"] == 0 or epoch + 1 == ctx.epochs)
            if evaluate_now:
                entry.update(validator(networks))
                if entry["val_map"] > best["map"]:
                    best = {"map": entry["val_map"], "epoch": epoch, "state": copy.deepcopy(networks.state_dict())}
                    stale = 0
                else:
                    stale += 1
            history.append(entry)
            progress.advance(1)
            progress.log(f"{self.name} epoch {epoch + 1}/{ctx.epochs}", **entry)
            if evaluate_now and h["patience"] and stale >= h["patience"]:
                break
        epochs_run = len(history)
        if best["state"] is not None:
            networks.load_state_dict(best["state"])
            selected, selection = best["epoch"], "best validation mAP"
        else:
            selected, selection = epochs_run - 1, "last epoch (no validation split)"
        model = DeepHashModel(networks=networks, method=self.name, bits=bits, hparams=self.hparams)
        method_record = dict(ctx.state.get("record", {}))
        diagnostics = {
            **code_diagnostics(networks, train),
            "best_epoch": selected,
            "selection": selection,
            "best_val_map": None if best["state"] is None else best["map"],
            **method_record.pop("diagnostics", {}),  # a method's own diagnostics (scalars or dicts)
        }
        model.record = {"diagnostics": diagnostics, "training": {
            "selected_epoch": selected,
            "selection": selection,
            "best_val_map": None if best["state"] is None else best["map"],
            "epochs_run": epochs_run,
            "stopped_early": epochs_run < ctx.epochs,
            "seconds_per_epoch": train_seconds / epochs_run,
            "fit_size": int(len(fit_idx)),
            "val_size": int(len(val_idx)),
            "device": str(device),
            "history": history,
        }}
        model.record.update(method_record)  # what the method chose to record
        return model


def code_diagnostics(networks: HashNetworks, data: CrossModalDataset) -> dict[str, Any]:
    """Label-free health of the selected networks' codes on ``data`` (the whole training set,
    which is the database under the ``dcgh`` protocol and WIKI-RoPH's shipped split).

    Per modality: ``unique_codes_<m>`` = number of distinct codes (collapse shows as few),
    ``unique_share_<m>`` = that over the number of items, ``bit_mean_abs_<m>`` = mean over bits of
    |mean over items of the bit in {-1, +1}| (0 = every bit balanced, 1 = every bit constant).
    """
    out: dict[str, Any] = {"diagnostic_items": len(data)}
    for m in MODALITIES:
        codes = sign(networks.outputs(m, data.features(m).astype(np.float32, copy=False)).cpu().numpy())
        unique = len(np.unique(np.packbits(codes > 0, axis=1), axis=0)) if len(codes) else 0
        out[f"unique_codes_{m}"] = int(unique)
        out[f"unique_share_{m}"] = round(unique / max(len(codes), 1), 6)
        out[f"bit_mean_abs_{m}"] = round(float(np.abs(codes.mean(axis=0, dtype=np.float64)).mean()), 6) if len(codes) else None
    return out


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting rows, validation rows) of a seeded random split; both sorted."""
    n_val = int(round(n * fraction))
    if fraction > 0 and n_val < 1:
        n_val = 1
    if n - n_val < 2:
        raise ValueError(f"training set of {n} items is too small for val_fraction={fraction}")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5A1D])).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _Validator:
    """Validation mAP@all of the current networks: validation items query the fitting items."""

    def __init__(self, train: CrossModalDataset, fit_idx: np.ndarray, val_idx: np.ndarray):
        self.fit = {m: train.features(m)[fit_idx].astype(np.float32) for m in MODALITIES}
        self.val = {m: train.features(m)[val_idx].astype(np.float32) for m in MODALITIES}
        self.fit_labels, self.val_labels = train.labels[fit_idx], train.labels[val_idx]

    def codes(self, networks: HashNetworks, which: dict[str, np.ndarray], modality: str) -> PackedCodes:
        return pack(sign(networks.outputs(modality, which[modality]).cpu().numpy()))

    def __call__(self, networks: HashNetworks) -> dict[str, float]:
        out = {}
        for key, (q, d) in {"val_i2t": ("image", "text"), "val_t2i": ("text", "image")}.items():
            out[key] = mean_average_precision(
                self.codes(networks, self.val, q), self.codes(networks, self.fit, d),
                self.val_labels, self.fit_labels,
            ).map
        out["val_map"] = (out["val_i2t"] + out["val_t2i"]) / 2
        return out
