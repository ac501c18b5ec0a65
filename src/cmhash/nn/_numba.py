"""numba kernel for :func:`cmhash.nn.losses.weighted_triplet_loss` (optional extra ``cmhash[fast]``).

Per anchor, the positives (in ascending order of x_ap = d_ap + margin) and the negatives (in
ascending order of d_an) are merged twice, in O(P + N) after the two argsorts: upwards for
count_ap and below_ap, downwards for m_an. Comparisons are strict (d_an < x_ap), as in the
definition of an active triplet, so ties give the same counts as the torch path.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def triplet_coefficients(x, pos_order, w, y, neg_order, neg_mask, count, below, m):  # pragma: no cover - jit
    """Fill, for every anchor a, positive p (w_ap > 0) and negative n (``neg_mask``):

    - ``count[a, p]`` = #{n : y_an < x_ap}, ``below[a, p]`` = sum of those y_an (0 for non-positives);
    - ``m[a, n]`` = sum of w_ap over the positives p with x_ap > y_an (0 for non-negatives).

    ``pos_order[a]`` sorts row a of ``x`` ascending (non-strictly), ``neg_order[a]`` row a of ``y``.
    """
    n_anchor, n_pos, n_neg = x.shape[0], x.shape[1], y.shape[1]
    for a in range(n_anchor):
        j, c, acc = 0, 0, 0.0                      # j: next negative in ascending order
        for q in range(n_pos):
            p = pos_order[a, q]
            if not w[a, p] > 0:
                count[a, p], below[a, p] = 0, 0.0
                continue
            xv = x[a, p]
            while j < n_neg:
                n = neg_order[a, j]
                if neg_mask[a, n]:
                    if not y[a, n] < xv:
                        break
                    c += 1
                    acc += y[a, n]
                j += 1
            count[a, p], below[a, p] = c, acc
        q, wsum = n_pos - 1, 0.0                   # q: next positive in descending order
        for jj in range(n_neg - 1, -1, -1):
            n = neg_order[a, jj]
            if not neg_mask[a, n]:
                m[a, n] = 0.0
                continue
            yv = y[a, n]
            while q >= 0:
                p = pos_order[a, q]
                if w[a, p] > 0:
                    if not x[a, p] > yv:
                        break
                    wsum += w[a, p]
                q -= 1
            m[a, n] = wsum
