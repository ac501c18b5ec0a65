"""HINT's pieces against plain loops: MMD, mixup target, InfoNCE, proxy consistency, tree proxies."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.graph import EncodingTree  # noqa: E402
from cmhash.methods.hint import (  # noqa: E402
    gaussian_mmd,
    info_nce,
    mixup_target,
    mixup_weight,
    proxy_consistency,
    tree_proxy_groups,
)
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
