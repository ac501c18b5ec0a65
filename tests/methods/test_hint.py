"""HINT's pieces against plain loops: MMD, mixup target, InfoNCE, proxy consistency, tree proxies."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from types import SimpleNamespace  # noqa: E402

import cmhash.methods.hint as hint_module  # noqa: E402
from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.graph import EncodingTree, build_encoding_tree, cross_modal_graph  # noqa: E402
from cmhash.methods.hint import (  # noqa: E402
    HINT,
    cross_proxy_with_pair,
    gaussian_mmd,
    info_nce,
    mixup_target,
    mixup_weight,
    pair_bit_agreement,
    pair_in_cross_share,
    proxy_consistency,
    shared_target,
    tree_proxy_groups,
)
from cmhash.nn.engine import Batch  # noqa: E402
from cmhash.methods.registry import get_method  # noqa: E402


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_mmd_matches_direct_formula(dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.7
    z = np.vstack([x, y])
    d2 = [((z[i] - z[j]) ** 2).sum() for i in range(9) for j in range(9) if i != j]
    s2 = float(np.median(d2))
    if len(d2) % 2 == 0:  # torch's median is the lower of the two middle values
        s2 = float(np.sort(d2)[len(d2) // 2 - 1])
    k = lambda a, b: math.exp(-((a - b) ** 2).sum() / (2 * s2))  # noqa: E731
    mmd2 = (sum(k(a, b) for a in x for b in x) / 25 + sum(k(a, b) for a in y for b in y) / 16
            - 2 * sum(k(a, b) for a in x for b in y) / 20)
    got = gaussian_mmd(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))
    assert float(got) == pytest.approx(math.sqrt(mmd2), rel=1e-5)
    same = torch.tensor(x, dtype=dtype)
    assert float(gaussian_mmd(same, same.clone())) == pytest.approx(0.0, abs=1e-3)


def test_mixup_weight_grows_with_the_gap():
    rng = np.random.default_rng(1)
    ref = torch.tensor(rng.standard_normal((16, 8)))
    same = torch.tensor(rng.standard_normal((16, 8)))
    near = same + 0.01 * torch.tensor(rng.standard_normal((16, 8)))
    far = torch.tensor(rng.standard_normal((16, 8))) + 3.0
    assert float(mixup_weight(same, near, ref)) < float(mixup_weight(same, far, ref))


def test_mixup_target_follows_eq6_with_sign_of_zero_positive():
    m_same = torch.tensor([[1.0, -1.0, 0.5, 0.0]])
    m_cross = torch.tensor([[-1.0, 1.0, -0.5, 0.0]])
    assert mixup_target(m_same, m_cross, 0.0).tolist() == [[-1, 1, -1, 1]]   # lambda = 0: m_cross
    assert mixup_target(m_same, m_cross, 3.0).tolist() == [[1, -1, 1, 1]]    # weight 3/4 on m_same
    assert mixup_target(m_same, m_cross, 1.0).tolist() == [[1, 1, 1, 1]]     # exact ties -> +1


@pytest.mark.parametrize("similarity", ["cosine", "inner"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_info_nce_matches_plain_loop(similarity, dtype):
    rng = np.random.default_rng(2)
    f = np.tanh(rng.standard_normal((6, 5)))
    t = np.sign(rng.standard_normal((6, 5)))
    tau = 0.3
    sim = (lambda a, b: cos(a, b)) if similarity == "cosine" else (lambda a, b: float(np.dot(a, b)))
    want = 0.0
    for i in range(6):
        den = sum(math.exp(sim(f[i], t[j]) / tau) for j in range(6))
        want -= math.log(math.exp(sim(f[i], t[i]) / tau) / den)
    got = info_nce(torch.tensor(f, dtype=dtype), torch.tensor(t, dtype=dtype), tau, similarity)
    assert float(got) == pytest.approx(want / 6, rel=1e-5)
    with pytest.raises(ValueError, match="hash_similarity"):
        info_nce(torch.tensor(f), torch.tensor(t), tau, "euclid")


def test_proxy_consistency_matches_plain_loop():
    rng = np.random.default_rng(3)
    f, m, o = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), rng.standard_normal((5, 6))
    tau = 0.3
    want = 0.0
    for i in range(4):
        p = np.array([math.exp(cos(f[i], o[j]) / tau) for j in range(5)])
        q = np.array([math.exp(cos(m[i], o[j]) / tau) for j in range(5)])
        p, q = p / p.sum(), q / q.sum()
        want += float((p * np.log(p / q)).sum())
    got = proxy_consistency(torch.tensor(f), torch.tensor(m), torch.tensor(o), tau)
    assert float(got) == pytest.approx(want / 4, rel=1e-9)


def brute_groups(parent: np.ndarray, n: int):
    """For each item and side, the member set by walking up as the docstring says."""
    def leaves(node):
        out = []
        for leaf in range(2 * n):
            x = leaf
            while x != -1:
                if x == node:
                    out.append(leaf)
                    break
                x = parent[x]
        return out

    result = {}
    for m, off in (("image", 0), ("text", n)):
        for side in ("same", "cross"):
            sets = []
            for i in range(n):
                leaf = i + off
                node = parent[leaf]
                while True:
                    under = leaves(node)
                    if side == "same":
                        members = [x - off for x in under if off <= x < off + n]
                        ok = len(members) >= 2
                    else:
                        o = n - off
                        members = [x - o for x in under if o <= x < o + n]
                        ok = len(members) >= 1
                    if ok or parent[node] == -1:
                        break
                    node = parent[node]
                sets.append(sorted(members))
            result[(m, side)] = sets
    return result


def test_tree_proxy_groups_match_a_brute_force_walk():
    n = 5
    # leaves: images 0..4, texts 5..9. Nodes: 10 = {0, 1, 5}, 11 = {2, 6, 7}, 12 = {3, 8},
    # 13 = {10, 11} (level 2), 14 = {12, 4, 9}, root 15.
    parent = np.array([10, 10, 11, 12, 14, 10, 11, 11, 12, 14, 13, 13, 14, 15, 15, -1])
    tree = EncodingTree(parent, 2 * n)
    got = tree_proxy_groups(tree, n)
    want = brute_groups(parent, n)
    for key, (group, members) in got.items():
        dense = members.toarray()
        for i in range(n):
            assert np.flatnonzero(dense[group[i]]).tolist() == want[key][i], (key, i)
    # image 0 has image 1 beside it; image 2's only image neighbour is up at node 13
    assert want[("image", "same")][0] == [0, 1]
    assert want[("image", "same")][2] == [0, 1, 2]
    assert want[("text", "cross")][2] == [2]


def test_hparams_are_checked():
    with pytest.raises(ValueError, match="proxy_source"):
        get_method("hint", proxy_source="leaves")._check_hparams()
    with pytest.raises(ValueError, match="needs same-modality"):
        get_method("hint", proxy_source="pair", mixup="mmd")._check_hparams()
    with pytest.raises(ValueError, match="tree_height"):
        get_method("hint", tree_height=1)._check_hparams()
    with pytest.raises(ValueError, match="preset"):
        get_method("hint", preset="v9")
    with pytest.raises(ValueError, match="target"):
        get_method("hint", target="both")._check_hparams()
    with pytest.raises(ValueError, match="pair_share"):
        get_method("hint", pair_share=1.5)._check_hparams()
    with pytest.raises(ValueError, match="mmd_scale"):
        get_method("hint", mmd_scale=0)._check_hparams()
    with pytest.raises(ValueError, match="pair_in_cross"):
        get_method("hint", pair_in_cross=1)._check_hparams()
    with pytest.raises(ValueError, match="no loss left"):
        get_method("hint", hash_weight=0, con_weight=0)._check_hparams()


# ------------------------------------------------------------------ the issue-11 readings
def test_shared_target_is_the_sign_of_the_summed_eq6_mixes():
    """Lemma 4.1: one b_i^mix for f_i^v and f_i^t, sign(mix_i^v + mix_i^t), mix = Eq. 6's argument."""
    rng = np.random.default_rng(7)
    sv, cv, st, ct = (rng.uniform(-1, 1, (5, 6)) for _ in range(4))
    lam_v, lam_t = 0.4, 2.5
    mix_v = hint_module.mixup_mix(torch.tensor(sv), torch.tensor(cv), lam_v)
    mix_t = hint_module.mixup_mix(torch.tensor(st), torch.tensor(ct), lam_t)
    got = shared_target(mix_v, mix_t).numpy()
    for i in range(5):
        for b in range(6):
            x = (lam_v / (1 + lam_v) * sv[i, b] + 1 / (1 + lam_v) * cv[i, b]
                 + lam_t / (1 + lam_t) * st[i, b] + 1 / (1 + lam_t) * ct[i, b])
            assert got[i, b] == (1.0 if x >= 0 else -1.0)
    # the two per-modality targets disagree somewhere, the shared one is a single code
    assert (mixup_target(torch.tensor(sv), torch.tensor(cv), lam_v)
            != mixup_target(torch.tensor(st), torch.tensor(ct), lam_t)).any()


@pytest.mark.parametrize("share", ["member", 0.5, 1.0])
def test_cross_proxy_with_pair_matches_the_member_sets(share):
    rng = np.random.default_rng(8)
    n, L = 6, 4
    codes = rng.uniform(-1, 1, (n, L))          # the other modality's codes; item i's pair is row i
    members = [[0, 1], [2], [1, 2, 3], [], [0, 4], [5]]   # tree N- of each item (item 3: empty)
    member_sum = np.array([codes[m].sum(0) if m else np.zeros(L) for m in members])
    count = np.array([len(m) for m in members], dtype=float)
    contains = np.array([i in m for i, m in enumerate(members)], dtype=float)
    got = cross_proxy_with_pair(torch.tensor(member_sum), torch.tensor(count), torch.tensor(contains),
                                torch.tensor(codes), share).numpy()
    for i, m in enumerate(members):
        rest = [j for j in m if j != i]
        if share == "member":
            want = codes[rest + [i]].mean(0)                       # Eq. 5 over N- with the pair
        elif rest:
            want = share * codes[i] + (1 - share) * codes[rest].mean(0)
        else:
            want = codes[i]
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


def test_lambda_exceeds_one_only_with_a_scale():
    rng = np.random.default_rng(9)
    ref = torch.tensor(rng.standard_normal((32, 8)))
    same = ref[:1].repeat(32, 1) + 1e-3 * torch.tensor(rng.standard_normal((32, 8)))
    far = -ref[:1].repeat(32, 1) + 1e-3 * torch.tensor(rng.standard_normal((32, 8)))  # two tight, far clusters
    plain = float(mixup_weight(same, far, ref))
    # near the cap: two point masses give sqrt(2 - 2 exp(-1/2)) = 0.887 with the median bandwidth
    assert 0.8 < plain <= math.sqrt(2) + 1e-9
    scaled = float(mixup_weight(same, far, ref, scale=4.0))
    assert scaled == pytest.approx(4 * plain) and scaled > 1
    # lambda > 1 puts more weight on m_same than on m_cross (the "intra-modal first" phase)
    m_same, m_cross = torch.ones(1, 3), -torch.ones(1, 3) * 0.9
    assert mixup_target(m_same, m_cross, scaled).tolist() == [[1, 1, 1]]
    assert mixup_target(m_same, m_cross, 0.5).tolist() == [[-1, -1, -1]]


def test_pair_in_cross_share_and_bit_agreement_by_hand():
    n = 5
    parent = np.array([10, 10, 11, 12, 14, 10, 11, 11, 12, 14, 13, 13, 14, 15, 15, -1])
    groups = tree_proxy_groups(EncodingTree(parent, 2 * n), n)
    got = pair_in_cross_share(groups, n)
    want = brute_groups(parent, n)
    for m in ("image", "text"):
        assert got[m].tolist() == [i in want[(m, "cross")][i] for i in range(n)]
    assert got["image"].tolist() == [True, False, True, True, True]  # image 1's N- is {0}: text 0 only
    a = torch.tensor([[0.5, -0.2, 0.0], [-1.0, 1.0, 1.0]])
    b = torch.tensor([[0.1, 0.3, -0.0], [-0.2, -1.0, 1.0]])
    assert pair_bit_agreement(a, b) == pytest.approx(4 / 6)   # sign(0) = sign(-0) = +1


def _ctx(hparams, proxies):
    return SimpleNamespace(hparams=hparams, state={"proxies": proxies, "lambda": {"image": [], "text": []}})


@pytest.mark.parametrize("target", ["shared", "per_modality"])
def test_batch_loss_uses_the_configured_target(monkeypatch, target):
    """Both modalities are pulled to one b_mix ("shared") or each to its own Eq. 6 target."""
    rng = np.random.default_rng(10)
    n, L = 8, 6
    method = HINT(target=target, con_weight=0.0, mmd_scale=3.0)
    h = method._check_hparams()
    proxies = {m: tuple(torch.tensor(rng.uniform(-1, 1, (n, L)), dtype=torch.float32) for _ in range(2))
               for m in ("image", "text")}
    codes = {m: torch.tanh(torch.tensor(rng.standard_normal((n, L)), dtype=torch.float32)) for m in ("image", "text")}
    seen = []
    monkeypatch.setattr(hint_module, "info_nce", lambda f, t, tau, sim: seen.append(t) or f.sum() * 0)
    ctx = _ctx(h, proxies)
    index = torch.arange(n)
    method.batch_loss(ctx, Batch(index, codes["image"], codes["text"], torch.zeros(n, 1)), codes)
    reference = torch.cat([codes["image"], codes["text"]])
    mixes = {}
    for m in ("image", "text"):
        same, cross = proxies[m]
        lam = 3.0 * gaussian_mmd(hint_module.cosine_distance(same, reference),
                                 hint_module.cosine_distance(cross, reference))
        assert ctx.state["lambda"][m] == [pytest.approx(float(lam))]
        mixes[m] = lam / (1 + lam) * same + 1 / (1 + lam) * cross
    if target == "shared":
        want = torch.where(mixes["image"] + mixes["text"] >= 0, 1.0, -1.0)
        assert torch.equal(seen[0], want) and torch.equal(seen[1], want)
    else:
        for got, m in zip(seen, ("image", "text")):
            assert torch.equal(got, torch.where(mixes[m] >= 0, 1.0, -1.0))


def test_fit_records_diagnostics_that_match_the_tree():
    data = make_synthetic(60, image_dim=10, text_dim=8, num_classes=3, seed=2)
    train = data.train
    model = get_method("hint", hidden=[16], epochs=3, batch_size=24).fit(train, 12, seed=0)
    rec = model.record["hint"]
    n = len(train)
    tree = build_encoding_tree(cross_modal_graph(train.features("image").astype(np.float64),
                                                 train.features("text").astype(np.float64), k=3), height=3)
    assert rec["pairs_in_one_community"] == pytest.approx(float(np.mean(tree.parent[:n] == tree.parent[n:2 * n])))
    groups = tree_proxy_groups(tree, n)
    for m in ("image", "text"):
        group, members = groups[(m, "cross")]
        dense = members.toarray()
        want = np.mean([dense[group[i], i] > 0 for i in range(n)])
        assert rec["pair_in_cross"][m] == pytest.approx(want)
    # pair bit agreement after the last epoch = that of the saved model's codes of the training pairs
    ci = model.encode("image", train.features("image")).unpack()
    ct = model.encode("text", train.features("text")).unpack()
    assert rec["pair_bit_agreement"] == pytest.approx(float((ci == ct).mean()))
    assert len(rec["pair_bit_agreement_per_epoch"]) == 3 and len(rec["lambda_per_epoch"]) == 3
    assert rec["pair_bit_agreement_per_epoch"][-1] == pytest.approx(rec["pair_bit_agreement"], abs=1e-6)
