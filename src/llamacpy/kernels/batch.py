"""Matmuls over a batch that mixes sequences, with every row's result independent of its batch neighbours.

Owns: `plan_calls(lin, groups)` and `apply(lin, x, calls)`: which rows of a multi-sequence batch go through one
Linear call together. A Linear picks its kernel by the number of rows (linear.DECODE_MAX), and the kernels differ
in rounding, so a row must never be pushed onto another path by the rows around it:
    - a group (the rows of one sequence in this batch, contiguous) of more than DECODE_MAX rows is called alone,
      exactly as `forward` of that chunk alone would call it;
    - groups of at most DECODE_MAX rows take the decode kernels, which compute each row with the same code
      whatever the other rows are (quantized activations per row, one loop per row; tests/test_model_batch.py
      checks it bit for bit per weight type), so their rows are merged into calls of at most DECODE_MAX rows:
      the weights are read once per call for all of them;
    - F32 weights go to numpy's BLAS for any row count, whose result for a row may depend on the row count
      (numpy calls gemv for one row, sgemm otherwise): there every group is called alone.
Must not: choose kernels (linear.py) or know about layers.
"""

from __future__ import annotations

import numpy as np

from .linear import DECODE_MAX, FusedLinear, LinearF32


def rows_independent(lin) -> bool:
    """Whether lin's decode path (<= DECODE_MAX rows) computes each row independently of the others."""
    if isinstance(lin, FusedLinear):
        return all(rows_independent(p) for p in lin.parts)
    return not isinstance(lin, LinearF32)


def plan_calls(independent: bool, groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Row ranges [a, b) to call a Linear on. groups: (start, end) row ranges, one per sequence, in order; the
    small groups (<= DECODE_MAX rows) must come before the large ones when `independent`."""
    if not independent:
        return list(groups)
    calls = []
    small_end = 0
    for a, b in groups:
        if b - a <= DECODE_MAX:
            small_end = b
    for a in range(0, small_end, DECODE_MAX):
        calls.append((a, min(small_end, a + DECODE_MAX)))
    calls += [(a, b) for a, b in groups if b - a > DECODE_MAX]
    return calls


def apply(lin, x: np.ndarray, calls: list[tuple[int, int]]) -> np.ndarray:
    """lin over the rows of x, one call per range.  x: (n, n_in) -> (n, n_out)"""
    if len(calls) == 1 and calls[0] == (0, x.shape[0]):
        return lin(x)
    out = np.empty((x.shape[0], lin.n_out), np.float32)
    for a, b in calls:
        out[a:b] = lin(x[a:b])
    return out
