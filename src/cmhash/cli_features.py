"""`cmhash features IMAGES_DIR CAPTIONS_FILE ...`: raw images and captions to a cmhash feature file."""

from __future__ import annotations

from typing import Optional

import typer


def features(
    images_dir: str = typer.Argument(..., help="folder of images (the captions file names them relative to it)"),
    captions_file: str = typer.Argument(..., help=".jsonl (image, caption, labels per line) or .tsv/.csv with a header row"),
    out: str = typer.Option(..., "--out", help="feature file to write (.npz; cmhash.load_dataset reads it)"),
    image_encoder: str = typer.Option(..., "--image-encoder", help="clip:MODEL (open_clip, e.g. clip:ViT-B-32) or torchvision:ARCH (e.g. torchvision:resnet50)"),
    image_weights: Optional[str] = typer.Option(None, "--image-weights", help="weights file, a tag in the library's cache (e.g. laion2b_s34b_b79k, IMAGENET1K_V2), or 'random'"),
    text_encoder: str = typer.Option(..., "--text-encoder", help="clip:MODEL, bow, binary-bow, tfidf or lda"),
    text_weights: Optional[str] = typer.Option(None, "--text-weights", help="CLIP text weights (default: --image-weights when both encoders are the same clip:MODEL)"),
    views: int = typer.Option(0, "--views", help="DEMO: M augmented views per image through the image encoder (0: none)"),
    query: int = typer.Option(0, "--query", help="put a seeded random query split of this many images into the file (0: none)"),
    vocabulary_size: int = typer.Option(1000, "--vocabulary-size", help="bow / tfidf / lda: words kept (most frequent, English stop words removed)"),
    topics: int = typer.Option(10, "--topics", help="lda: number of topics"),
    batch_size: int = typer.Option(32, "--batch-size", help="images per forward pass"),
    seed: int = typer.Option(0, "--seed", help="seed of random initialisation, views, LDA and the query split"),
    device: str = typer.Option("cpu", "--device", help="torch device for the encoders (cpu, cuda, cuda:1, ...)"),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="open_clip model config (JSON) to register; its file name is the MODEL name"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="where cached weights are looked for (default: the library's own cache)"),
    allow_unlabelled: bool = typer.Option(False, "--allow-unlabelled", help="keep rows without labels (all-zero label rows)"),
) -> None:
    """Encode a folder of images and a captions file into a feature file with provenance (nothing is downloaded)."""
    from cmhash.cli import console, fail
    from cmhash.progress import ConsoleProgress

    if text_weights is None and text_encoder == image_encoder and image_encoder.startswith("clip:"):
        text_weights = image_weights
    progress = None
    try:
        from cmhash.features import build_image_encoder, build_text_encoder, extract_features

        common = {"seed": seed, "device": device, "model_config": model_config, "cache_dir": cache_dir}
        image = build_image_encoder(image_encoder, image_weights, **common)
        text = build_text_encoder(text_encoder, text_weights, vocabulary_size=vocabulary_size, topics=topics, **common)
        progress = ConsoleProgress()
        meta = extract_features(images_dir, captions_file, out, image_encoder=image, text_encoder=text, views=views,
                                query=query, batch_size=batch_size, seed=seed, allow_unlabelled=allow_unlabelled,
                                progress=progress)
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        if progress is not None:
            progress.close()
        fail(str(exc))
    split = meta["split"]
    console.print(
        f"wrote {out}: {meta['items']} pairs ({meta['images']} images), image {meta['dims']['image']}-d "
        f"({image_encoder}), text {meta['dims']['text']}-d ({text_encoder}), {meta['classes']} classes"
        + (f", {views} views per image" if views else "")
        + (f", query {split['query']} / database {split['database']}" if query else ", no split (--query N adds one)")
    )
