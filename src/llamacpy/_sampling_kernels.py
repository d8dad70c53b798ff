"""Sequential float accumulations of the sampler chain that numpy cannot express (numba).

Owns: loops whose rounding order is part of llama.cpp's result. Must not: know about samplers.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def acc_f32_plus_f64(terms):
    """float acc = 0; for t in terms: acc += t  (t double: each sum in double, rounded to float)."""
    acc = np.float32(0.0)
    for i in range(terms.shape[0]):
        acc = np.float32(np.float64(acc) + terms[i])
    return acc


@numba.njit(cache=True)
def _before(va, ia, vb, ib):
    """Whether candidate (value va, position ia) sorts before (vb, ib): larger value first, equal values by
    position, NaN after everything (where np.lexsort puts it)."""
    if va != va:
        return vb != vb and ia < ib
    if vb != vb:
        return True
    return va > vb or (va == vb and ia < ib)


@numba.njit(cache=True)
def top_k_positions(logit, k):
    """The positions of the k first candidates in (logit descending, position ascending) order, in that order:
    what np.argpartition + np.lexsort((part, -logit[part])) give, in one pass over the array with a sorted
    buffer of k (a candidate that does not beat the k-th is rejected with one comparison).  (k,) int64"""
    n = logit.shape[0]
    buf = np.empty(k, np.int64)
    m = 0  # filled entries of buf, sorted
    thr = logit[0]  # the k-th value once buf is full
    for i in range(n):
        v = logit[i]
        if m == k:
            if v < thr:  # the common case: below the k-th value (False for NaN, handled by _before)
                continue
            last = buf[k - 1]
            if not _before(v, i, logit[last], last):
                continue
            j = k - 1
        else:
            j = m
            m += 1
        while j > 0 and _before(v, i, logit[buf[j - 1]], buf[j - 1]):
            buf[j] = buf[j - 1]
            j -= 1
        buf[j] = i
        if m == k:
            thr = logit[buf[k - 1]]
    return buf
