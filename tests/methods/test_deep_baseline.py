"""The plain deep baseline's loss against an explicit triplet loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.methods.deep_baseline import PAIRS, real_triplet_loss  # noqa: E402


def test_real_triplet_loss_is_the_sum_of_four_cubic_losses():
    rng = np.random.default_rng(0)
    b, k = 7, 6
    codes = {m: torch.tanh(torch.tensor(rng.standard_normal((b, k)))) for m in ("image", "text")}
    labels = torch.tensor(rng.integers(0, 2, (b, 3)), dtype=torch.float64)
    labels[labels.sum(1) == 0, 1] = 1
    want = 0.0
    for u, v in PAIRS:
        cu = codes[u].numpy() / np.linalg.norm(codes[u].numpy(), axis=1, keepdims=True)
        cv = codes[v].numpy() / np.linalg.norm(codes[v].numpy(), axis=1, keepdims=True)
        d = 1 - cu @ cv.T
        rel = labels.numpy() @ labels.numpy().T > 0
        hinges = [d[a, p] - d[a, n] + 0.25 for a, p, n in itertools.product(range(b), repeat=3)
                  if rel[a, p] and not rel[a, n]]
        act = [h for h in hinges if h > 0]
        want += sum(act) / max(len(act), 1)
    assert float(real_triplet_loss(codes, labels, 0.25)) == pytest.approx(want)


# ---------------------------------------------------------------- classifier modes, cls_weight=0
from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.methods.deep_baseline import DeepBaseline, classifier_loss  # noqa: E402
from cmhash.methods.registry import get_method  # noqa: E402
from cmhash.nn.engine import Batch, TrainContext  # noqa: E402
from cmhash.nn.networks import HashNetworks  # noqa: E402

SMALL = dict(hidden=[16], epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(300, image_dim=16, text_dim=8, num_classes=4, seed=2)


def _batch_and_ctx(data, **hparams):
    method = DeepBaseline(hidden=[16], **hparams)
    tr = data.train
    torch.manual_seed(0)
    net = HashNetworks(tr.dims, 12, [16])
    ctx = TrainContext(networks=net, device=torch.device("cpu"), bits=12, epochs=3, hparams=method._check_hparams(),
                       data={"image": torch.tensor(tr.image), "text": torch.tensor(tr.text),
                             "labels": torch.tensor(tr.labels, dtype=torch.float32)})
    method.setup(ctx)
    idx = torch.arange(40)
    batch = Batch(idx, ctx.data["image"][idx], ctx.data["text"][idx], ctx.data["labels"][idx])
    codes = {m: torch.tanh(net(m, batch.features(m))) for m in ("image", "text")}
    return method, ctx, batch, codes


def _hash_grads(ctx):
    return [p.grad for p in ctx.networks.parameters()]


@pytest.mark.parametrize("mode", ["detached", "joint"])
def test_ce_gradient_reaches_the_hash_layers_only_when_joint(data, mode):
    _, ctx, batch, codes = _batch_and_ctx(data, classifier=mode)
    ce = classifier_loss(ctx.modules["classifier"], codes, batch.labels, detached=mode == "detached")
    ce.backward()
    grads = _hash_grads(ctx)
    if mode == "detached":
        assert all(g is None for g in grads)
    else:
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert float(ctx.modules["classifier"].weight.grad.abs().sum()) > 0  # the classifier learns in both


def test_cls_weight_zero_removes_the_classifier_and_its_gradient(data):
    method, ctx, batch, codes = _batch_and_ctx(data, cls_weight=0.0, classifier="joint")
    assert "classifier" not in ctx.modules
    loss, logs = method.batch_loss(ctx, batch, codes)
    assert "cls" not in logs
    want = real_triplet_loss(codes, batch.labels, 0.25)
    assert float(loss.detach()) == float(want.detach())
    g_loss = torch.autograd.grad(loss, list(ctx.networks.parameters()), retain_graph=True)
    g_tri = torch.autograd.grad(want, list(ctx.networks.parameters()))
    for a, b in zip(g_loss, g_tri):  # the whole gradient is the triplet loss's: CE adds nothing
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_detached_baseline_trains_the_hash_layers_exactly_as_without_classifier(data):
    codes = {}
    for name, kw in {"detached": {"classifier": "detached"}, "none": {"cls_weight": 0.0},
                     "joint": {"classifier": "joint"}}.items():
        model = get_method("deep-baseline", **SMALL, **kw).fit(data.train, 12, seed=0)
        codes[name] = (model.encode("image", data.query.image).data, model.encode("text", data.query.text).data)
    for m in range(2):
        assert np.array_equal(codes["detached"][m], codes["none"][m])
    assert not all(np.array_equal(codes["joint"][m], codes["none"][m]) for m in range(2))


def test_default_classifier_mode_and_bad_values(data):
    assert DeepBaseline.defaults["classifier"] == "detached"
    with pytest.raises(ValueError, match="classifier"):
        get_method("deep-baseline", classifier="frozen", **SMALL).fit(data.train, 8, seed=0)
    with pytest.raises(ValueError, match="cls_weight"):
        get_method("deep-baseline", cls_weight=-1.0, **SMALL).fit(data.train, 8, seed=0)
