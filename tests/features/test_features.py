"""cmhash.features: raw images + captions -> feature file, on tiny randomly initialised encoders
built from configs (nothing downloaded), then features -> train -> index -> search end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cmhash.features._torchvision_compat import guard_applied, import_torchvision  # noqa: E402

torch = pytest.importorskip("torch")
try:  # open_clip imports torchvision: import it through the guard first
    import_torchvision()
except ImportError as exc:
    pytest.skip(f"torchvision not installed (extra cmhash[features]): {exc}", allow_module_level=True)
pytest.importorskip("open_clip")
pytest.importorskip("sklearn")
Image = pytest.importorskip("PIL.Image")

import cmhash.cli  # noqa: E402
from cmhash.cli import app  # noqa: E402
from cmhash.data.protocols import load_dataset  # noqa: E402
from cmhash.data.readers import read_source  # noqa: E402
from cmhash.features import (  # noqa: E402
    build_image_encoder, build_text_encoder, encode_images, encode_views, extract_features, read_pairs,
)
from cmhash.io import load_arrays  # noqa: E402

runner = CliRunner()


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
TINY_CLIP = {  # a 1-layer ViT / text transformer: builds in a fraction of a second
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLOURS = {"red": 0, "green": 1, "blue": 2}
WORDS = {"red": "a red apple on a table", "green": "green grass in a field", "blue": "blue sea under the sky"}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cmhash.cli.console, "width", 400)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """15 generated images (a dominant colour each, noise, varied sizes) and their captions."""
    root = tmp_path_factory.mktemp("raw")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(15):
        colour = list(COLOURS)[i % 3]
        pixels = rng.integers(0, 60, size=(30 + i, 40, 3), dtype=np.uint8)
        pixels[..., COLOURS[colour]] += 180
        name = f"sub/{colour}{i}.png" if i % 5 == 0 else f"{colour}{i}.jpg"
        Image.fromarray(pixels).save(images / name)
        labels = [colour] + (["warm"] if colour == "red" else [])
        rows.append({"image": name, "caption": f"{WORDS[colour]} picture {i}", "labels": labels})
    captions = root / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    return {"root": root, "images": images, "captions": captions, "config": config, "rows": rows}


def clip_encoders(raw, weights="random", seed=0):
    common = {"seed": seed, "model_config": raw["config"]}
    return (build_image_encoder("clip:tiny-clip", weights, **common),
            build_text_encoder("clip:tiny-clip", weights, **common))


# ------------------------------------------------------------------------------- torchvision
def test_torchvision_imports_and_its_models_run():
    """The guard (only applied when torchvision's C extension did not load) leaves models and
    transforms working and torchvision's own C++ ops failing with torchvision's own message."""
    tv = import_torchvision()
    net = tv.models.get_model("mobilenet_v3_small", weights=None).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    if guard_applied():
        assert not tv.extension._has_ops()
        with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
            tv.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


# ---------------------------------------------------------------------------------- inputs
def test_pairs_from_tsv_with_shared_images_and_label_lists(raw, tmp_path):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("caption\timage\tlabels\textra\n"
                   "a red apple\tred0.jpg\tred|warm\tx\n"
                   "another red apple\tred0.jpg\tred\tx\n"
                   "green grass\tgreen1.jpg\tgreen\tx\n")
    for name in ("red0.jpg", "green1.jpg"):
        (tmp_path / name).write_bytes((raw["images"] / "red3.jpg").read_bytes())
    pairs = read_pairs(tmp_path, tsv)
    assert pairs.label_names == ("green", "red", "warm")
    np.testing.assert_array_equal(pairs.labels, [[0, 1, 1], [0, 1, 0], [1, 0, 0]])
    assert pairs.ids == ("red0.jpg#1", "red0.jpg#2", "green1.jpg")
    files, row_image = pairs.unique_images()
    assert files == ["red0.jpg", "green1.jpg"] and row_image.tolist() == [0, 0, 1]


@pytest.mark.parametrize("line, message", [
    ({"image": "nope.jpg", "caption": "x", "labels": ["a"]}, "line 2: image 'nope.jpg' not found"),
    ({"image": "red3.jpg", "caption": "x"}, "line 2: no labels"),
    ({"image": "red3.jpg", "caption": "", "labels": ["a"]}, "line 2: 'caption' must be non-empty"),
    ({"caption": "x", "labels": ["a"]}, "line 2: missing key"),
])
def test_pairs_errors_name_the_file_and_line(raw, tmp_path, line, message):
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image": "red3.jpg", "caption": "ok", "labels": ["a"]}) + "\n" + json.dumps(line))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_pairs(raw["images"], captions)


def test_unlabelled_rows_only_when_allowed(raw, tmp_path):
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image": "red3.jpg", "caption": "a", "labels": "red"}) + "\n"
                        + json.dumps({"image": "green1.jpg", "caption": "b"}) + "\n")
    with pytest.raises(ValueError, match="allow_unlabelled"):
        read_pairs(raw["images"], captions)
    pairs = read_pairs(raw["images"], captions, allow_unlabelled=True)
    np.testing.assert_array_equal(pairs.labels, [[1], [0]])


# -------------------------------------------------------------------------------- encoders
def test_clip_weights_file_loads_exactly_the_saved_weights(raw, tmp_path):
    image_a, text_a = clip_encoders(raw, seed=0)
    image_b, _ = clip_encoders(raw, seed=1)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(text_a.clip.model.state_dict(), weights)
    image_f, text_f = clip_encoders(raw, weights=str(weights))
    files = [r["image"] for r in raw["rows"][:4]]
    feats = {k: encode_images(e, raw["images"], files) for k, e in (("a", image_a), ("b", image_b), ("f", image_f))}
    assert feats["a"].shape == (4, 16)
    np.testing.assert_array_equal(feats["f"], feats["a"])
    assert not np.allclose(feats["b"], feats["a"])  # another seed: another model, so loading mattered
    captions = [r["caption"] for r in raw["rows"][:4]]
    np.testing.assert_array_equal(text_f.encode(captions), text_a.encode(captions))
    prov = image_f.provenance()
    assert prov["weights_sha256"] == file_sha256(weights) and prov["weights_origin"] == "local file"
    assert image_a.provenance()["weights_sha256"] is None
    assert "randomly initialised" in image_a.provenance()["weights_origin"]


def test_clip_refuses_missing_weights_and_uncached_tags(raw, tmp_path):
    with pytest.raises(ValueError, match="no weights given"):
        build_image_encoder("clip:tiny-clip", None, model_config=raw["config"])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_image_encoder("clip:ViT-B-32", "openai", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a pretrained tag"):
        build_image_encoder("clip:ViT-B-32", "no-such-tag", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="open_clip has no model 'nope'"):
        build_image_encoder("clip:nope", "random")


def test_clip_tag_resolves_to_the_cached_file_with_the_tags_settings(tmp_path):
    """A pretrained tag is looked up in the Hugging Face cache only (layout written by hand here)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    from cmhash.features.clip import _cached_tag

    cfg = get_pretrained_cfg("ViT-B-32", "openai")
    repo = cfg["hf_hub"].rstrip("/")
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"not really weights")
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("abc123")
    weights, options = _cached_tag(open_clip, "ViT-B-32", "openai", tmp_path)
    assert weights.path.name == "open_clip_model.safetensors"
    assert weights.sha256 == file_sha256(snapshot / "open_clip_model.safetensors")
    assert options["force_quick_gelu"] is True  # OpenAI's weights were trained with QuickGELU


def test_torchvision_weights_file_and_classifier_removed(raw, tmp_path):
    random_a = build_image_encoder("torchvision:mobilenet_v3_small", "random", seed=0)
    weights = tmp_path / "mnv3.pth"
    tv = import_torchvision()
    torch.manual_seed(0)
    torch.save(tv.models.get_model("mobilenet_v3_small", weights=None).state_dict(), weights)
    loaded = build_image_encoder("torchvision:mobilenet_v3_small", str(weights))
    random_b = build_image_encoder("torchvision:mobilenet_v3_small", "random", seed=1)
    files = [r["image"] for r in raw["rows"][:3]]
    a, f, b = (encode_images(e, raw["images"], files) for e in (random_a, loaded, random_b))
    assert a.shape == (3, 1024)  # the classifier's input (classifier.3 removed)
    np.testing.assert_allclose(f, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(b, a)
    assert loaded.provenance()["weights_sha256"] == file_sha256(weights)
    assert loaded.preprocessing["output"].startswith("input of the final Linear layer 'classifier.3'")
    with pytest.raises(ValueError, match="not a state dict of torchvision's resnet18"):
        build_image_encoder("torchvision:resnet18", str(weights))
    with pytest.raises(FileNotFoundError, match="not in the cache .*never downloads"):
        build_image_encoder("torchvision:resnet18", "IMAGENET1K_V1", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no final Linear"):
        build_image_encoder("torchvision:squeezenet1_1", "random")


def test_classic_text_encoders_against_brute_force():
    captions = ["the red apple and the red car", "green grass", "a blue sky over green grass", "red sky"]
    bow = build_text_encoder("bow", vocabulary_size=4)
    counts = bow.encode(captions)
    vocab = list(bow.vocabulary)
    words = [c.split() for c in captions]
    frequency = {w: sum(ws.count(w) for ws in words) for w in set(sum(words, []))}
    assert set(vocab) == {"red", "green", "grass", "sky"}  # the 4 most frequent non-stop words
    assert frequency["red"] == 3 and frequency["grass"] == 2
    np.testing.assert_array_equal(counts, [[ws.count(v) for v in vocab] for ws in words])
    binary = build_text_encoder("binary-bow", vocabulary_size=4).encode(captions)
    np.testing.assert_array_equal(binary, (counts > 0).astype(np.float32))
    tfidf = build_text_encoder("tfidf", vocabulary_size=4).encode(captions)
    np.testing.assert_allclose(np.linalg.norm(tfidf, axis=1), 1, rtol=1e-6)
    lda = build_text_encoder("lda", topics=3, seed=0)
    topics = lda.encode(captions)
    assert topics.shape == (4, 3) and np.allclose(topics.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(topics, build_text_encoder("lda", topics=3, seed=0).encode(captions))
    with pytest.raises(ValueError, match="takes no weights"):
        build_text_encoder("tfidf", "some.pt")
    with pytest.raises(ValueError, match="cannot build a vocabulary"):
        build_text_encoder("bow").encode(["the", "and a"])
    with pytest.raises(ValueError, match="unknown text encoder 'word2vec'"):
        build_text_encoder("word2vec")


def test_views_are_seeded_augmentations_through_the_encoder(raw):
    image, _ = clip_encoders(raw)
    files = [r["image"] for r in raw["rows"][:3]]
    v1 = encode_views(image, raw["images"], files, 4, seed=5, batch_size=5)
    v2 = encode_views(image, raw["images"], files, 4, seed=5, batch_size=32)  # batching does not matter
    v3 = encode_views(image, raw["images"], files, 4, seed=6)
    plain = encode_images(image, raw["images"], files)
    assert v1.shape == (3, 4, 16)
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(v1, v3)
    assert not np.allclose(v1[:, 0], v1[:, 1])  # each view is a new draw
    assert not np.allclose(v1[:, 0], plain)


# ------------------------------------------------------------------------------ the file
def test_feature_file_layout_provenance_and_loading(raw, tmp_path):
    image, text = clip_encoders(raw)
    out = tmp_path / "f.npz"
    meta = extract_features(raw["images"], raw["captions"], out, image_encoder=image, text_encoder=text,
                            views=2, query=5, seed=3)
    arrays, stored = load_arrays(out)
    assert stored == json.loads(json.dumps(meta))
    assert sorted(k for k in arrays if k.startswith("query/")) == [
        "query/ids", "query/image", "query/labels", "query/text", "query/views"]
    assert arrays["label_names"].tolist() == ["blue", "green", "red", "warm"]
    assert meta["split"]["query"] == 5 and meta["split"]["database"] == 10
    assert meta["image"]["encoder"] == "clip:tiny-clip" and meta["views"]["per_image"] == 2
    assert meta["captions_sha256"] == file_sha256(raw["captions"])
    data = load_dataset(out)  # the file's own split: protocol "shipped"
    assert data.info["protocol"] == "shipped" and data.info["layout"] == "features"
    assert len(data.query) == 5 and len(data.database) == 10 and data.train.views.shape == (10, 2, 16)
    # rows are the right pairs: the features of each id equal that image's own encoding
    names = [r["image"] for r in raw["rows"]]
    by_name = dict(zip(names, encode_images(image, raw["images"], names)))
    for split in (data.query, data.database):
        np.testing.assert_allclose(split.image, np.stack([by_name[i] for i in split.ids]), rtol=1e-5, atol=1e-6)
        rows = {r["image"]: r for r in raw["rows"]}
        for i, ident in enumerate(split.ids):
            names = [n for n, on in zip(arrays["label_names"], split.labels[i]) if on]
            assert names == sorted(rows[ident]["labels"])
    without_split = tmp_path / "g.npz"
    extract_features(raw["images"], raw["captions"], without_split, image_encoder=image, text_encoder=text)
    part = read_source(without_split).parts["all"]
    assert part.ids.tolist() == [r["image"] for r in raw["rows"]] and part.views is None


def test_bad_arguments_are_clear(raw, tmp_path):
    image, text = clip_encoders(raw)
    with pytest.raises(ValueError, match="query = 15 images leaves no database"):
        extract_features(raw["images"], raw["captions"], tmp_path / "x.npz", image_encoder=image,
                         text_encoder=text, query=15)
    with pytest.raises(ValueError, match="views must be a whole number"):
        extract_features(raw["images"], raw["captions"], tmp_path / "x.npz", image_encoder=image,
                         text_encoder=text, views=-1)
    broken = raw["root"] / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "bad.jpg").write_bytes(b"not an image")
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image": "bad.jpg", "caption": "x", "labels": ["a"]}) + "\n")
    with pytest.raises(ValueError, match="bad.jpg: cannot read as an image"):
        extract_features(broken, captions, tmp_path / "x.npz", image_encoder=image, text_encoder=text)
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------------------ end to end
def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_features_train_index_search(raw, tmp_path):
    """features (tiny CLIP from a config, weights from a file) -> train -> index -> search."""
    from cmhash.evaluation import database_codes
    from cmhash.index import HammingIndex
    from cmhash.methods.base import HashModel

    weights = tmp_path / "tiny-clip.pt"
    _, text = clip_encoders(raw, seed=7)
    torch.save(text.clip.model.state_dict(), weights)
    feats = tmp_path / "feats.npz"
    res = invoke("features", raw["images"], raw["captions"], "--image-encoder", "clip:tiny-clip",
                 "--model-config", raw["config"], "--image-weights", weights, "--text-encoder", "clip:tiny-clip",
                 "--views", 2, "--query", 3, "--out", feats)
    assert res.exit_code == 0, res.output
    assert "15 pairs (15 images), image 16-d" in " ".join(res.output.split())
    assert load_arrays(feats)[1]["text"]["weights_sha256"] == file_sha256(weights)  # --text-weights defaulted

    run = tmp_path / "run"
    res = invoke("train", "cca-itq", "--dataset", feats, "--bits", 8, "--out", run)
    assert res.exit_code == 0, res.output
    index_file = tmp_path / "index.npz"
    res = invoke("index", "build", run, "--dataset", feats, "--out", index_file)
    assert res.exit_code == 0, res.output

    data = load_dataset(feats)
    model = HashModel.load(run / "model.npz")
    index = HammingIndex.load(index_file)
    assert set(index.ids.tolist()) == set(data.database.ids.tolist())
    query_codes = model.encode("text", data.query.text)
    found_ids, distances = index.search(query_codes, k=4)
    # brute force: Hamming distances between the query's text codes and the database image codes
    q = np.unpackbits(query_codes.data, axis=1)[:, :8]
    d = np.unpackbits(database_codes(model, data.database, "image").data, axis=1)[:, :8]
    brute = (q[:, None, :] != d[None, :, :]).sum(axis=2)
    order = np.argsort(brute, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(distances, np.take_along_axis(brute, order, axis=1))
    np.testing.assert_array_equal(found_ids, data.database.ids[order])

    demo_run = tmp_path / "demo"
    res = invoke("train", "demo", "--dataset", feats, "--bits", 8, "--out", demo_run, "--param", "epochs=1")
    assert res.exit_code == 0, res.output
    record = json.loads((demo_run / "metrics.json").read_text())["record"]
    assert record["demo"]["views"] == "dataset views (M = 2)"  # DEMO ran on the image encoder's views


def test_cli_errors_are_one_line(raw, tmp_path):
    res = invoke("features", raw["images"], raw["captions"], "--image-encoder", "torchvision:resnet18",
                 "--text-encoder", "tfidf", "--out", tmp_path / "x.npz")
    assert res.exit_code == 2 and "no weights given" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    res = invoke("features", raw["images"], raw["root"] / "missing.jsonl", "--image-encoder", "torchvision:resnet18",
                 "--image-weights", "random", "--text-encoder", "tfidf", "--out", tmp_path / "x.npz")
    assert res.exit_code == 2 and "missing.jsonl: no such file" in " ".join(res.output.split())


@pytest.mark.slow
def test_real_architectures_build_with_their_real_preprocessing(raw):
    """The architectures a user loads real weights into (random weights here): CLIP ViT-B/32 gives
    512-d image and text features at 224 x 224 input, ResNet-50 2,048-d, VGG-16 fc7 4,096-d."""
    files = [r["image"] for r in raw["rows"][:2]]
    image = build_image_encoder("clip:ViT-B-32", "random")
    text = build_text_encoder("clip:ViT-B-32", "random")
    assert image.input_size == 224 and encode_images(image, raw["images"], files).shape == (2, 512)
    assert text.encode(["a red apple", "green grass"]).shape == (2, 512)
    assert encode_views(image, raw["images"], files[:1], 2).shape == (1, 2, 512)
    for arch, dim in (("resnet50", 2048), ("vgg16", 4096)):
        cnn = build_image_encoder(f"torchvision:{arch}", "random")
        assert cnn.preprocessing["center_crop"] == 224 and cnn.preprocessing["resize"] == 256
        assert encode_images(cnn, raw["images"], files).shape == (2, dim)
