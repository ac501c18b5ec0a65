"""Image encoders: CLIP image towers (open_clip) and torchvision CNNs, plus DEMO's augmented views.

Every encoder holds a torch module in eval mode, an evaluation transform (PIL image -> tensor),
the numbers that transform uses (input size, mean, std) and a provenance record. Features are the
module's output for a batch of transformed images:

* ``clip:MODEL`` -- ``model.encode_image`` (the image embedding, not L2-normalised) of an
  open_clip model (``ViT-B-32``, ``RN50``, ... or ``local-dir:/folder``), with open_clip's own
  evaluation transform for those weights.
* ``torchvision:ARCH`` -- the input of the network's final Linear layer (the classifier is
  replaced by the identity): ResNet-50's 2,048-d pool features, VGG-16's 4,096-d fc7, ... with
  the weights' own transform (resize, centre crop, mean/std) when they are torchvision's.

DEMO's views (Tu et al., ICLR 2024, Appendix B): resize to 256 x 256, random 224 x 224 crop,
random horizontal flip, colour jitter with p = 0.7, random grayscale with p = 0.2, Gaussian blur
with kernel 3, then the encoder's normalisation. The sizes scale with the encoder's input
(size x 256/224). *Decision*: the paper gives no jitter strengths or blur sigma; we use
brightness/contrast/saturation 0.4, hue 0.1 (MoCo v2's) and torchvision's default sigma (0.1, 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cmhash.features._torchvision_compat import import_torchvision
from cmhash.features.weights import RANDOM, Weights, check_weights_argument, local_weights, random_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
DEMO_JITTER_P, DEMO_GRAYSCALE_P, DEMO_BLUR_KERNEL = 0.7, 0.2, 3


@dataclass
class ImageEncoder:
    """A loaded image encoder: ``module(batch) -> features`` with its transform and provenance."""

    name: str
    module: Any  # torch.nn.Module or a callable on a batch tensor
    transform: Callable[[Any], Any]  # PIL image -> 3 x H x W tensor
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Weights
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def encode(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.module(batch).float()

    def view_transform(self) -> Callable[[Any], Any]:
        """DEMO's augmentation (module docstring) at this encoder's input size and normalisation."""
        import_torchvision()
        from torchvision import transforms as T

        resize = round(self.input_size * 256 / 224)
        return T.Compose([
            T.Resize((resize, resize)),
            T.RandomCrop(self.input_size),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(**DEMO_JITTER)], p=DEMO_JITTER_P),
            T.RandomGrayscale(p=DEMO_GRAYSCALE_P),
            T.GaussianBlur(kernel_size=DEMO_BLUR_KERNEL),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def view_provenance(self) -> dict[str, Any]:
        resize = round(self.input_size * 256 / 224)
        return {"recipe": "DEMO (ICLR 2024) Appendix B", "resize": [resize, resize], "random_crop": self.input_size,
                "horizontal_flip_p": 0.5, "color_jitter": DEMO_JITTER, "color_jitter_p": DEMO_JITTER_P,
                "grayscale_p": DEMO_GRAYSCALE_P, "gaussian_blur_kernel": DEMO_BLUR_KERNEL,
                "gaussian_blur_sigma": [0.1, 2.0], "mean": list(self.mean), "std": list(self.std)}

    def provenance(self) -> dict[str, Any]:
        return {"encoder": self.name, **self.weights.provenance(), "preprocessing": self.preprocessing}


def build_image_encoder(spec: str, weights: str | None, *, seed: int = 0, device: str = "cpu",
                        model_config: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None) -> ImageEncoder:
    """An image encoder from ``clip:MODEL`` or ``torchvision:ARCH`` (see the module docstring).

    ``weights``: a file, a tag in the library's cache (open_clip: ``laion2b_s34b_b79k``, ...;
    torchvision: ``IMAGENET1K_V2``, ...), or ``"random"``. ``model_config``: an open_clip model
    config (JSON) to register first, so ``MODEL`` may be a model of your own.
    """
    kind, _, name = spec.partition(":")
    weights = check_weights_argument(weights, spec)
    if kind == "clip" and name:
        from cmhash.features.clip import load_clip

        clip = load_clip(name, weights, seed=seed, device=device, model_config=model_config, cache_dir=cache_dir)
        return ImageEncoder(
            name=spec, module=_on_device(clip.model.encode_image, device), transform=clip.transform,
            input_size=clip.input_size,
            mean=clip.mean, std=clip.std, weights=clip.weights,
            preprocessing={"transform": repr(clip.transform), "output": "encode_image, not normalised"},
        )
    if kind == "torchvision" and name:
        return _torchvision_encoder(name, weights, seed=seed, device=device, cache_dir=cache_dir)
    raise ValueError(f"unknown image encoder '{spec}'; expected clip:MODEL (open_clip) or torchvision:ARCH")


# ------------------------------------------------------------------------------- torchvision
def _torchvision_encoder(arch: str, weights: str, *, seed: int, device: str,
                         cache_dir: str | os.PathLike | None) -> ImageEncoder:
    import torch

    import_torchvision()
    from torchvision import models
    from torchvision import transforms as T

    if arch not in models.list_models():
        raise ValueError(f"torchvision has no model '{arch}'; e.g. resnet50, vgg16, vit_b_16 "
                         "(torchvision.models.list_models())")
    known = {w.name: w for w in models.get_model_weights(arch)}
    if weights == RANDOM:
        torch.manual_seed(seed)
        resolved, recipe = random_weights(seed), None
    elif weights in known:
        folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
        file = folder / os.path.basename(known[weights].url)
        if not file.is_file():
            raise FileNotFoundError(
                f"torchvision weights {arch}.{weights} are not in the cache ({file} is missing); cmhash never "
                f"downloads: fetch {known[weights].url} yourself and pass its path, or place it there"
            )
        resolved, recipe = local_weights(file, f"torchvision {arch} {weights} (cache)"), known[weights]
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"{weights}: not a weights file, and not a tag of {arch} ({', '.join(known) or 'none'}) "
                "nor 'random'"
            )
        resolved = local_weights(weights, "local file")
        # torchvision's own file (same name as a tag's download): use that tag's transform
        recipe = next((w for w in known.values() if os.path.basename(w.url) == Path(weights).name), None)
    module = models.get_model(arch, weights=None)
    if resolved.path is not None:
        state = torch.load(resolved.path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(f"{resolved.path}: not a state dict of torchvision's {arch}: {exc}") from exc
    layer = _drop_classifier(module, arch)
    module.eval().to(device)
    if recipe is not None:
        tr = recipe.transforms()
        resize, crop, mean, std = tr.resize_size[0], tr.crop_size[0], tuple(tr.mean), tuple(tr.std)
        interpolation = tr.interpolation
    else:  # the ImageNet evaluation recipe: resize 256, centre crop 224
        resize, crop, mean, std = 256, 224, IMAGENET_MEAN, IMAGENET_STD
        interpolation = T.InterpolationMode.BILINEAR
    transform = T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(crop), T.ToTensor(),
                           T.Normalize(mean, std)])
    to_device = _on_device(module, device)
    return ImageEncoder(
        name=f"torchvision:{arch}", module=to_device, transform=transform, input_size=crop, mean=mean, std=std,
        weights=resolved,
        preprocessing={"resize": resize, "center_crop": crop, "interpolation": str(interpolation.value),
                       "mean": list(mean), "std": list(std),
                       "recipe": f"torchvision {recipe.name}" if recipe is not None else "ImageNet evaluation",
                       "output": f"input of the final Linear layer '{layer}' (classifier removed)"},
    )


def _drop_classifier(module: Any, arch: str) -> str:
    """Replace the network's last Linear layer by the identity; the name of the layer replaced."""
    import torch

    linears = [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision:{arch} has no final Linear classifier to remove; choose a network "
                         "with one (ResNet, VGG, AlexNet, DenseNet, MobileNet, EfficientNet, ViT, ...)")
    name = linears[-1]
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, torch.nn.Identity())
    return name


def _on_device(module: Any, device: str) -> Callable[[Any], Any]:
    def run(batch: Any) -> Any:
        return module(batch.to(device))

    return run
