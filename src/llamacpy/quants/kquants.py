"""The k-quants (256-element super-blocks) Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: numpy dequantizers, numba quantizers.

Owns: the super-block layouts (ggml-common.h) and the reference quantizers that llama-quantize runs when no
importance matrix is given (`quantize_q*_K` -> `quantize_row_q*_K_ref`), including their searches:
`make_qkx2_quants` (Q2_K, Q4_K, Q5_K: scale and min per sub-block by a sweep of candidate scales),
`make_q3_quants` (Q3_K: iterative re-assignment), `make_qx_quants` (Q6_K: sweep of 18 candidate scales).
Every step is float32 in the C source's evaluation order (no fused multiply-add, sequential sums) so the bytes
match ggml's. `nearest_int` is round-to-nearest-even, as the C magic-number trick.

Dequantizers: `(n_blocks, type_size)` uint8 -> `(n_blocks, 256)` float32, vectorised over blocks.
Quantizers: `(n_blocks, 256)` float32 -> fill `(n_blocks, type_size)` uint8, parallel over blocks.

Must not: choose types or walk tensors (quantize.py does), or do matmuls (kernels/ does).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange

from .half import f16_bits_to_f32, f32_to_f16_bits

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)


# ---------------------------------------------------------------------------------------------------------
# dequantization (numpy, vectorised over blocks)


def _f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 at byte `offset` of every block, as float32 of shape (n_blocks, 1)."""
    return blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K 2-bit fields: (n_blocks, 64) bytes -> (n_blocks, 256) values in element order.
    Element 128*c + 32*j + l comes from byte 32*c + l, bits 2j..2j+1."""
    q = qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)  # (n_blocks, 2, 4, 32) -> (n_blocks, 256)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each (n_blocks, 8) (get_scale_min_k4)."""
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    sc = blocks[:, 0:16]  # (n_blocks, 16): low nibble scale, high nibble min
    q = _crumbs(blocks[:, 16:80]).reshape(-1, 16, 16).astype(np.float32)
    d, dmin = _f16_field(blocks, 80), _f16_field(blocks, 82)
    dl = (d * (sc & 0xF).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(-1, QK_K)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K: 12 bytes -> 16 signed six-bit scales (n_blocks, 16), as the reference quantizer packs them."""
    j = np.arange(16)
    low = np.where(j < 8, s[:, j % 8] & 0xF, s[:, j % 8] >> 4)
    high = (s[:, 8 + j % 4] >> (2 * (j // 4)).astype(np.uint8)) & 3
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    hmask = blocks[:, 0:32]
    q = _crumbs(blocks[:, 32:96]).astype(np.int8)  # (n_blocks, 256)
    sc = _q3_k_scales(blocks[:, 96:108]).astype(np.float32)  # (n_blocks, 16)
    d = _f16_field(blocks, 108)
    # high bit of element 128*c + 32*j + l is bit (4c + j) of hmask[l]
    hbit = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (n_blocks, 8, 32)
    q = q - np.int8(4) * (1 - hbit.reshape(-1, QK_K)).astype(np.int8)
    dl = (d * sc)[:, :, None]
    return (dl * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, QK_K)


def _q45_k(blocks: np.ndarray, high: np.ndarray | None) -> np.ndarray:
    d, dmin = _f16_field(blocks, 0), _f16_field(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    qs = blocks[:, -128:].reshape(-1, 4, 1, 32)
    q = (qs >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0xF  # (n_blocks, 4, 2, 32)
    if high is not None:
        q = q | (high << 4)
    dl = (d * sc.astype(np.float32)).reshape(-1, 4, 2, 1)
    ml = (dmin * mn.astype(np.float32)).reshape(-1, 4, 2, 1)
    return (dl * q.astype(np.float32) - ml).reshape(-1, QK_K)


def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    return _q45_k(blocks, None)


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    qh = blocks[:, 16:48]  # (n_blocks, 32); element (j, half, l) takes bit 2j+half of qh[l]
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _q45_k(blocks, high.reshape(-1, 4, 2, 32))


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # (n_blocks, chunk, half, 32)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)  # (n_blocks, 16): one per 16 elements
    d = _f16_field(blocks, 208)
    # chunk c, k in 0..3: low bits from ql[c, k % 2] (nibble k // 2), high bits from qh[c] bits 2k..2k+1
    low = (ql[:, :, None, :, :] >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)) & 0xF
    low = low.reshape(-1, 2, 4, 32)  # k = 2*nibble + half
    high = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3  # (n_blocks, 2, 4, 32)
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)
    dl = (d * sc)[:, :, None]
    return (dl * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, QK_K)


# ---------------------------------------------------------------------------------------------------------
# quantization helpers (numba; float32 as the C reference)


@nb.njit(cache=True, inline="always")
def nearest_int(v):
    """ggml's nearest_int: round to nearest, ties to even (for |v| < 2**22)."""
    return int(np.rint(v))


@nb.njit(cache=True, inline="always")
def _clamp(v, lo, hi):
    return max(lo, min(hi, v))


@nb.njit(cache=True)
def make_qx_quants_rmse1(x, o, n, nmax, L):
    """make_qx_quants(n, nmax, x+o, L+o, rmse_type=1, qw=NULL): symmetric scale, weights x**2, 18 trial
    scales around nmax/max. Writes L[o:o+n] (in 0..2*nmax-1), returns the scale."""
    mx = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[o + i])
        if ax > amax:
            amax = ax
            mx = x[o + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[o + i] = 0
        return F32(0.0)
    fnmax = F32(nmax)
    iscale = -fnmax / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        xi = x[o + i]
        li = _clamp(nearest_int(iscale * xi), -nmax, nmax - 1)
        L[o + i] = li + nmax
        w = xi * xi
        fl = F32(li)
        sumlx += w * xi * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != F32(0.0) else F32(0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + F32(0.1) * F32(step)) / mx
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            xi = x[o + i]
            fl = F32(_clamp(nearest_int(iscale * xi), -nmax, nmax - 1))
            w = xi * xi
            sumlx += w * xi * fl
            suml2 += w * fl * fl
        if suml2 > F32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[o + i] = nmax + _clamp(nearest_int(iscale * x[o + i]), -nmax, nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@nb.njit(cache=True)
def make_q3_quants(x, o, n, nmax, L):
    """make_q3_quants(n, nmax, x+o, L+o, do_rmse=true): start at nmax/max, then up to 5 passes moving single
    elements to the level that improves the weighted (x**2) fit. Writes L[o:o+n] (+nmax), returns the scale."""
    mx = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[o + i])
        if ax > amax:
            amax = ax
            mx = x[o + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[o + i] = 0
        return F32(0.0)
    iscale = -F32(nmax) / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        xi = x[o + i]
        li = _clamp(nearest_int(iscale * xi), -nmax, nmax - 1)
        L[o + i] = li
        w = xi * xi
        sumlx += w * xi * F32(li)
        suml2 += w * F32(li) * F32(li)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            xi = x[o + i]
            w = xi * xi
            fli = F32(L[o + i])
            slx = sumlx - w * xi * fli
            if slx > F32(0.0):
                sl2 = suml2 - w * fli * fli
                new_l = _clamp(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
                if new_l != L[o + i]:
                    fnew = F32(new_l)
                    slx += w * xi * fnew
                    sl2 += w * fnew * fnew
                    if sl2 > F32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[o + i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[o + i] += nmax
    return sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)


@nb.njit(cache=True)
def make_qkx2_quants(x, o, n, nmax, weights, L, laux, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants: asymmetric (scale, min) fit of x[o:o+n] to levels 0..nmax, sweeping nstep+1 trial
    scales and solving the weighted least squares for each. Writes L[o:o+n]; returns (scale, -min)."""
    mn = x[o]
    mx = x[o]
    sum_w = weights[0]
    sum_x = sum_w * x[o]
    for i in range(1, n):
        xi = x[o + i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        w = weights[i]
        sum_w += w
        sum_x += w * xi
    if mn > F32(0.0):
        mn = F32(0.0)
    if mx == mn:
        for i in range(n):
            L[o + i] = 0
        return F32(0.0), -mn
    fnmax = F32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F32(1.0) / iscale
    best_error = F32(0.0)
    for i in range(n):
        li = _clamp(nearest_int(iscale * (x[o + i] - mn)), 0, nmax)
        L[o + i] = li
        diff = scale * F32(li) + mn - x[o + i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * F32(step) + fnmax) / (mx - mn)
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            li = _clamp(nearest_int(iscale * (x[o + i] - mn)), 0, nmax)
            laux[i] = li
            w = weights[i]
            fl = F32(li)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[o + i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F32(0.0):
                this_min = F32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = F32(0.0)
            for i in range(n):
                diff = this_scale * F32(laux[i]) + this_min - x[o + i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[o + i] = laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@nb.njit(cache=True, inline="always")
def _store_f16(out, i, o, v):
    h = f32_to_f16_bits(v)
    out[i, o] = h & 0xFF
    out[i, o + 1] = h >> 8
    return f16_bits_to_f32(h)  # the value as stored, which the requantization pass uses


@nb.njit(cache=True, inline="always")
def _pack_crumbs(L, out, i, o):
    """Q2_K/Q3_K: 256 two-bit values -> 64 bytes at out[i, o:]."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            out[i, o + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                      | (L[j + l + 96] << 6))


# ---------------------------------------------------------------------------------------------------------
# block quantizers


@nb.njit(parallel=True, cache=True)
def quantize_q2_k(x, out):  # x (n_blocks, 256) f32, out (n_blocks, 84) u8
    for i in prange(x.shape[0]):
        xb = x[i]
        L = np.zeros(QK_K, np.int32)
        laux = np.zeros(16, np.int32)
        weights = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(16):
            for l in range(16):
                weights[l] = abs(xb[16 * j + l])
            s, m = make_qkx2_quants(xb, 16 * j, 16, 3, weights, L, laux, F32(-0.5), F32(0.1), 15, True)
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        sc = np.zeros(16, np.int32)
        if max_scale > F32(0.0):
            iscale = F32(15.0) / max_scale
            for j in range(16):
                sc[j] = nearest_int(iscale * scales[j]) & 0xFF
            d = _store_f16(out, i, 80, max_scale / F32(15.0))
        else:
            d = _store_f16(out, i, 80, F32(0.0))
        if max_min > F32(0.0):
            iscale = F32(15.0) / max_min
            for j in range(16):
                sc[j] = (sc[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
            dmin = _store_f16(out, i, 82, max_min / F32(15.0))
        else:
            dmin = _store_f16(out, i, 82, F32(0.0))
        for j in range(16):
            out[i, j] = sc[j]
            dl = d * F32(sc[j] & 0xF)
            if dl == F32(0.0):
                continue
            dm = dmin * F32(sc[j] >> 4)
            for ii in range(16):
                L[16 * j + ii] = _clamp(nearest_int((xb[16 * j + ii] + dm) / dl), 0, 3)
        _pack_crumbs(L, out, i, 16)


@nb.njit(parallel=True, cache=True)
def quantize_q3_k(x, out):  # x (n_blocks, 256) f32, out (n_blocks, 110) u8
    for i in prange(x.shape[0]):
        xb = x[i]
        L = np.zeros(QK_K, np.int32)
        scales = np.empty(16, np.float32)
        max_scale = F32(0.0)
        amax = F32(0.0)
        for j in range(16):
            s = make_q3_quants(xb, 16 * j, 16, 4, L)
            scales[j] = s
            if abs(s) > amax:
                amax = abs(s)
                max_scale = s
        sb = np.zeros(12, np.int32)  # packed scales
        if max_scale != F32(0.0):
            iscale = F32(-32.0) / max_scale
            for j in range(16):
                l = (nearest_int(iscale * scales[j]) + 128) % 256 - 128  # int8_t
                l = _clamp(l, -32, 31) + 32
                if j < 8:
                    sb[j] = l & 0xF
                else:
                    sb[j - 8] |= (l & 0xF) << 4
                sb[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
            d = _store_f16(out, i, 108, F32(1.0) / iscale)
        else:
            d = _store_f16(out, i, 108, F32(0.0))
        for j in range(12):
            out[i, 96 + j] = sb[j] & 0xFF
        for j in range(16):
            s = (sb[j] & 0xF) if j < 8 else ((sb[j - 8] >> 4) & 0xF)
            s = (s | (((sb[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
            dl = d * F32(s)
            if dl == F32(0.0):
                continue
            for ii in range(16):
                L[16 * j + ii] = _clamp(nearest_int(xb[16 * j + ii] / dl), -4, 3) + 4
        for m in range(32):
            h = 0
            for bit in range(8):
                k = 32 * bit + m
                if L[k] > 3:
                    h |= 1 << bit
                    L[k] -= 4
            out[i, m] = h
        _pack_crumbs(L, out, i, 32)


@nb.njit(cache=True, inline="always")
def _q45_k_scales(xb, nmax, rmin, nstep, L, out, i):
    """Shared first half of Q4_K/Q5_K: sub-block fits, 6-bit scales/mins, d/dmin; then requantize L.
    Returns nothing; L holds the final levels (0..nmax)."""
    laux = np.zeros(32, np.int32)
    weights = np.empty(32, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    max_scale = F32(0.0)
    max_min = F32(0.0)
    for j in range(8):
        sum_x2 = F32(0.0)
        for l in range(32):
            sum_x2 += xb[32 * j + l] * xb[32 * j + l]
        av_x = np.sqrt(sum_x2 / F32(32.0))
        for l in range(32):
            weights[l] = av_x + abs(xb[32 * j + l])
        s, m = make_qkx2_quants(xb, 32 * j, 32, nmax, weights, L, laux, rmin, F32(0.1), nstep, False)
        scales[j] = s
        mins[j] = m
        if s > max_scale:
            max_scale = s
        if m > max_min:
            max_min = m
    inv_scale = F32(63.0) / max_scale if max_scale > F32(0.0) else F32(0.0)
    inv_min = F32(63.0) / max_min if max_min > F32(0.0) else F32(0.0)
    ls = np.empty(8, np.int32)
    lm = np.empty(8, np.int32)
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    for j in range(4):  # pack: bytes 0-3 scales, 4-7 mins, 8-11 low nibbles of j>=4; top bits above
        out[i, 4 + j] = ls[j] | ((ls[j + 4] >> 4) << 6)
        out[i, 8 + j] = lm[j] | ((lm[j + 4] >> 4) << 6)
        out[i, 12 + j] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)
    d = _store_f16(out, i, 0, max_scale / F32(63.0))
    dmin = _store_f16(out, i, 2, max_min / F32(63.0))
    for j in range(8):
        dl = d * F32(ls[j])
        if dl == F32(0.0):
            continue
        dm = dmin * F32(lm[j])
        for ii in range(32):
            L[32 * j + ii] = _clamp(nearest_int((xb[32 * j + ii] + dm) / dl), 0, nmax)


@nb.njit(parallel=True, cache=True)
def quantize_q4_k(x, out):  # x (n_blocks, 256) f32, out (n_blocks, 144) u8
    for i in prange(x.shape[0]):
        L = np.zeros(QK_K, np.int32)
        _q45_k_scales(x[i], 15, F32(-1.0), 20, L, out, i)
        for c in range(4):
            for l in range(32):
                out[i, 16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + l + 32] << 4)


@nb.njit(parallel=True, cache=True)
def quantize_q5_k(x, out):  # x (n_blocks, 256) f32, out (n_blocks, 176) u8
    for i in prange(x.shape[0]):
        L = np.zeros(QK_K, np.int32)
        _q45_k_scales(x[i], 31, F32(-0.5), 15, L, out, i)
        for l in range(32):
            out[i, 16 + l] = 0
        for c in range(4):
            m1 = 1 << (2 * c)
            for l in range(32):
                l1 = L[64 * c + l]
                l2 = L[64 * c + l + 32]
                if l1 > 15:
                    l1 -= 16
                    out[i, 16 + l] |= m1
                if l2 > 15:
                    l2 -= 16
                    out[i, 16 + l] |= m1 << 1
                out[i, 48 + 32 * c + l] = l1 | (l2 << 4)


@nb.njit(parallel=True, cache=True)
def quantize_q6_k(x, out):  # x (n_blocks, 256) f32, out (n_blocks, 210) u8
    for i in prange(x.shape[0]):
        xb = x[i]
        L = np.zeros(QK_K, np.int32)
        scales = np.empty(16, np.float32)
        max_scale = F32(0.0)
        max_abs_scale = F32(0.0)
        for ib in range(16):
            s = make_qx_quants_rmse1(xb, 16 * ib, 16, 32, L)
            scales[ib] = s
            if abs(s) > max_abs_scale:
                max_abs_scale = abs(s)
                max_scale = s
        if max_abs_scale < GROUP_MAX_EPS:
            for k in range(out.shape[1]):
                out[i, k] = 0
            continue
        iscale = F32(-128.0) / max_scale
        d = _store_f16(out, i, 208, F32(1.0) / iscale)
        for ib in range(16):
            s = min(127, nearest_int(iscale * scales[ib]))
            out[i, 192 + ib] = s & 0xFF
            dl = d * F32(s)
            if dl == F32(0.0):
                continue
            for ii in range(16):
                L[16 * ib + ii] = _clamp(nearest_int(xb[16 * ib + ii] / dl), -32, 31) + 32
        for c in range(2):
            j = 128 * c
            for l in range(32):
                a, b, e, f = L[j + l], L[j + l + 32], L[j + l + 64], L[j + l + 96]
                out[i, 64 * c + l] = (a & 0xF) | ((e & 0xF) << 4)
                out[i, 64 * c + l + 32] = (b & 0xF) | ((f & 0xF) << 4)
                out[i, 128 + 32 * c + l] = (a >> 4) | ((b >> 4) << 2) | ((e >> 4) << 4) | ((f >> 4) << 6)
