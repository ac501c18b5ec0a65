"""numba kernel for :func:`cmhash.nn.losses.weighted_triplet_loss` (optional extra ``cmhash[fast]``).

Per anchor, the positives (in ascending order of x_ap = d_ap + margin) and the negatives (in
ascending order of d_an) are merged twice, in O(P + N) after the two argsorts: upwards for
count_ap and below_ap, downwards for m_an. Comparisons are strict (d_an < x_ap), as in the
definition of an active triplet, so ties give the same counts as the torch path.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def triplet_coefficients(x, pos_order, w, y, neg_order, neg_mask, count, below, m):  # pragma: no cover - jit
    """Fill, for every anchor a, positive p (w_ap > 0) and negative n (``neg_mask``):

    - ``count[a, p]`` = #{n : y_an < x_ap}, ``below[a, p]`` = sum of those y_an (0 for non-positives);
    - ``m[a, n]`` = sum of w_ap over the positives p with x_ap > y_an (0 for non-negatives).

    ``pos_order[a]`` sorts row a of ``x`` ascending (non-strictly), ``neg_order[a]`` row a of ``y``.
    """
    n_anchor, n_pos, n_neg = x.shape[0], x.shape[1], y.shape[1]
    xs, ws, ps = np.empty(n_pos, x.dtype), np.empty(n_pos, w.dtype), np.empty(n_pos, np.int64)
    ys, ns = np.empty(n_neg, y.dtype), np.empty(n_neg, np.int64)
    for a in range(n_anchor):
        kp = 0                                     # the positives, ascending: x, w, column
        for q in range(n_pos):
            p = pos_order[a, q]
            count[a, p], below[a, p] = 0, 0.0
            if w[a, p] > 0:
                xs[kp], ws[kp], ps[kp] = x[a, p], w[a, p], p
                kp += 1
        kn = 0                                     # the negatives, ascending: y, column
        for j in range(n_neg):
            n = neg_order[a, j]
            m[a, n] = 0.0
            if neg_mask[a, n]:
                ys[kn], ns[kn] = y[a, n], n
                kn += 1
        j, acc = 0, 0.0                            # upwards: negatives strictly below each x
        for q in range(kp):
            while j < kn and ys[j] < xs[q]:
                acc += ys[j]
                j += 1
            count[a, ps[q]], below[a, ps[q]] = j, acc
        q, wsum = kp - 1, 0.0                      # downwards: weights of positives strictly above each y
        for j in range(kn - 1, -1, -1):
            while q >= 0 and xs[q] > ys[j]:
                wsum += ws[q]
                q -= 1
            m[a, ns[j]] = wsum
