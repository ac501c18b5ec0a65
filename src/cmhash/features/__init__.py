"""Features from raw inputs: a folder of images and a captions file -> a cmhash feature file.

Image encoders: CLIP image towers (open_clip) and torchvision CNNs; text encoders: CLIP text
towers and the shallow literature's bag-of-words / TF-IDF / LDA (scikit-learn). Weights come from
a local file or the library's cache and are never downloaded. DEMO's augmented image views are an
option. Needs the extra ``cmhash[features]`` (torch, torchvision, open_clip_torch, scikit-learn,
Pillow); ``docs/features.md`` shows a run with real CLIP and torchvision weights.

    from cmhash.features import build_image_encoder, build_text_encoder, extract_features
    image = build_image_encoder("clip:ViT-B-32", "/models/open_clip_pytorch_model.bin")
    text = build_text_encoder("clip:ViT-B-32", "/models/open_clip_pytorch_model.bin")
    extract_features("photos/", "captions.jsonl", "feats.npz", image_encoder=image, text_encoder=text,
                     views=5, query=500)
    data = cmhash.load_dataset("feats.npz")   # query/database/train from the file's own split
"""

from cmhash.features.extract import encode_images, encode_views, extract_features
from cmhash.features.image_encoders import ImageEncoder, build_image_encoder
from cmhash.features.pairs import Pairs, read_pairs
from cmhash.features.text_encoders import TextEncoder, build_text_encoder

__all__ = [
    "ImageEncoder", "Pairs", "TextEncoder", "build_image_encoder", "build_text_encoder", "encode_images",
    "encode_views", "extract_features", "read_pairs",
]
