"""Loading an open_clip CLIP model once for both towers, from a local file, the library's cache or
a random initialisation, never downloading.

``weights`` may be:

* a file path -- an open_clip checkpoint (``open_clip_pytorch_model.bin`` /
  ``open_clip_model.safetensors`` of a Hugging Face snapshot, or ``epoch_K.pt`` of your own
  open_clip training), read by open_clip's ``load_checkpoint``;
* a pretrained tag of ``open_clip.list_pretrained()`` (``openai``, ``laion2b_s34b_b79k``, ...) whose
  file is already in the Hugging Face cache (``cache_dir``, else ``$HF_HUB_CACHE`` /
  ``~/.cache/huggingface/hub``): loaded with the tag's own settings (QuickGELU, mean/std,
  interpolation, resize mode), exactly as open_clip does for the tag;
* ``"random"`` -- random initialisation (seeded).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cmhash.features._torchvision_compat import import_torchvision
from cmhash.features.weights import RANDOM, Weights, local_weights, random_weights


@dataclass
class Clip:
    name: str
    model: Any
    transform: Any
    tokenizer: Any
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Weights
    device: str


_LOADED: dict[tuple, Clip] = {}


def load_clip(name: str, weights: str, *, seed: int = 0, device: str = "cpu",
              model_config: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None) -> Clip:
    """The open_clip model ``name`` with ``weights`` (module docstring), in eval mode; loaded once
    per process for the same arguments, so the image and text towers share one model."""
    key = (name, str(weights), seed, device, str(model_config), str(cache_dir))
    if key in _LOADED:
        return _LOADED[key]
    import torch

    import_torchvision()
    import open_clip

    if model_config is not None:
        config = Path(model_config)
        if not config.is_file():
            raise FileNotFoundError(f"{config}: no such open_clip model config (JSON)")
        open_clip.add_model_config(config)
    if name not in open_clip.list_models():
        raise ValueError(
            f"open_clip has no model '{name}' (see open_clip.list_models(); a config file of your own "
            "registers its file name as the model name: model_config=/path/NAME.json)"
        )
    options: dict[str, Any] = {}
    if weights == RANDOM:
        torch.manual_seed(seed)
        resolved, pretrained = random_weights(seed), None
    elif Path(weights).is_file():
        resolved, pretrained = local_weights(weights, "local file"), str(weights)
    else:
        resolved, options = _cached_tag(open_clip, name, weights, cache_dir)
        pretrained = str(resolved.path)
    with _offline():
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, cache_dir=None if cache_dir is None else str(cache_dir),
                **options)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"open_clip cannot load {name} with weights {weights}: {exc}") from exc
        tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    size = model.visual.image_size
    normalize = next(t for t in transform.transforms if type(t).__name__ == "Normalize")
    clip = Clip(name=name, model=model, transform=transform, tokenizer=tokenizer,
                input_size=int(size[0] if isinstance(size, (tuple, list)) else size),
                mean=tuple(float(v) for v in normalize.mean), std=tuple(float(v) for v in normalize.std),
                weights=resolved, device=device)
    _LOADED[key] = clip
    return clip


def _cached_tag(open_clip: Any, name: str, tag: str, cache_dir: str | os.PathLike | None) -> tuple[Weights, dict]:
    """The cached file of an open_clip pretrained tag and the tag's settings; never downloads."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise FileNotFoundError(
            f"{tag}: not a weights file, and not a pretrained tag of open_clip's {name} (tags: {tags}) nor 'random'"
        )
    looked: list[str] = []
    file = None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" (default file) or "org/repo/file"
        for candidate in ([filename] if filename else []) + ["open_clip_model.safetensors",
                                                            "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, candidate, cache_dir=None if cache_dir is None else str(cache_dir))
            looked.append(f"{repo}/{candidate} in the Hugging Face cache")
            if isinstance(found, str):
                file = found
                break
    if file is None and cfg.get("url"):
        folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidate = folder / os.path.basename(cfg["url"])
        looked.append(str(candidate))
        file = str(candidate) if candidate.is_file() else None
    if file is None:
        raise FileNotFoundError(
            f"open_clip weights {name}/{tag} are not in the cache (looked for {'; '.join(looked)}); cmhash "
            "never downloads: fetch them yourself (e.g. open_clip.create_model_and_transforms on a machine "
            "with network access) and pass the file's path"
        )
    options = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    for option, cfg_key in (("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"),
                            ("image_resize_mode", "resize_mode")):
        if cfg.get(cfg_key) is not None:
            options[option] = cfg[cfg_key]
    return local_weights(file, f"open_clip {name}/{tag} (cache)"), options


@contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries in offline mode while open_clip builds the model and tokenizer."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - open_clip requires huggingface_hub
        hf_constants = None
    before = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if hf_constants is not None and before is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hf_constants is not None and before is not None:
            hf_constants.HF_HUB_OFFLINE = before
