"""Per-modality hash networks over pre-extracted features.

Each modality has an MLP ``x -> [Linear -> ReLU (-> Dropout)] x depth -> Linear(bits)`` whose
output ``u`` is relaxed to ``tanh(u)`` while training and binarised to ``sign(u)`` (sign(0) =
+1, :func:`cmhash.codes.sign`) at inference. Input standardisation (training mean / std) lives
in the network as buffers, so a saved network carries it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cmhash.data.dataset import MODALITIES


class HashMLP(nn.Module):
    """One modality's hash function: features (n x d) -> pre-activations (n x bits)."""

    def __init__(self, in_dim: int, bits: int, hidden: Sequence[int] = (512,), dropout: float = 0.0):
        super().__init__()
        if in_dim < 1 or bits < 1:
            raise ValueError(f"HashMLP needs in_dim >= 1 and bits >= 1, got {in_dim}, {bits}")
        if any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        d = int(in_dim)
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = int(h)
        layers.append(nn.Linear(d, int(bits)))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class HashNetworks(nn.Module):
    """The image and text hash MLPs plus their input standardisation."""

    def __init__(
        self,
        dims: dict[str, int],
        bits: int,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.0,
    ):
        super().__init__()
        missing = [m for m in MODALITIES if m not in dims]
        if missing:
            raise ValueError(f"HashNetworks: dims lacks modality {missing}")
        self.dims = {m: int(dims[m]) for m in MODALITIES}
        self.bits = int(bits)
        self.hidden = [int(h) for h in hidden]
        self.dropout = float(dropout)
        self.nets = nn.ModuleDict({m: HashMLP(self.dims[m], bits, self.hidden, dropout) for m in MODALITIES})
        for m in MODALITIES:
            self.register_buffer(f"mean_{m}", torch.zeros(self.dims[m]))
            self.register_buffer(f"scale_{m}", torch.ones(self.dims[m]))

    def set_standardization(self, modality: str, mean: np.ndarray, std: np.ndarray) -> None:
        """Inputs become (x - mean) / std (std of constant columns treated as 1)."""
        std = np.where(np.asarray(std) > 1e-12, std, 1.0)
        getattr(self, f"mean_{modality}").copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        getattr(self, f"scale_{modality}").copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations u (n x bits); codes are tanh(u) in training, sign(u) at inference."""
        x = (x - getattr(self, f"mean_{modality}")) / getattr(self, f"scale_{modality}")
        return self.nets[modality](x)

    def config(self) -> dict[str, Any]:
        return {"dims": self.dims, "bits": self.bits, "hidden": self.hidden, "dropout": self.dropout}

    @torch.no_grad()
    def outputs(self, modality: str, x: np.ndarray | torch.Tensor, *, batch_size: int = 4096,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Gradient-free pre-activations for a whole matrix, in batches, in eval mode.

        The caller's train/eval mode is restored afterwards.
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            xt = torch.as_tensor(x, dtype=torch.float32)
            out = [self(modality, xt[i:i + batch_size].to(device)) for i in range(0, xt.shape[0], batch_size)]
            return torch.cat(out) if out else torch.zeros((0, self.bits), device=device)
        finally:
            self.train(was_training)


def module_to_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's state_dict as plain numpy arrays named ``prefix.<key>`` (saved via cmhash.io)."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def arrays_to_module(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> nn.Module:
    """Load ``prefix.<key>`` arrays into ``module`` (strict: every key must match)."""
    pre = f"{prefix}."
    state = {k[len(pre):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(pre)}
    expected = set(module.state_dict())
    if set(state) != expected:
        raise ValueError(
            f"saved '{prefix}' arrays do not match the network: missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}"
        )
    module.load_state_dict(state, strict=True)
    return module
