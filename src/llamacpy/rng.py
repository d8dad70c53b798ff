"""llama.cpp's random numbers: `std::mt19937` and libstdc++'s `discrete_distribution<int>` /
`uniform_real_distribution<float>` draws, bit for bit.

Owns: the Mersenne Twister (seeded as `std::mt19937(seed)`: the standard init_genrand recurrence), the
`generate_canonical<double, 53>` value built from two 32-bit outputs (`(x0 + x1 * 2^32) / 2^64`, clamped below
1), `generate_canonical<float, 24>` from one output, libstdc++'s discrete_distribution (float weights summed and
normalised in double, partial sums in double with the last forced to 1.0, `lower_bound` of the canonical value;
fewer than two weights draw nothing and return 0), and llama.cpp's seed rule (`LLAMA_DEFAULT_SEED` = 0xFFFFFFFF
means a fresh random seed; any other value is taken modulo 2^32).
Must not: know about tokens or samplers.
"""

from __future__ import annotations

import secrets

import numpy as np

LLAMA_DEFAULT_SEED = 0xFFFFFFFF

_N, _M = 624, 397
_MATRIX_A = np.uint32(0x9908B0DF)
_UPPER, _LOWER = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)


def resolve_seed(seed: int | None) -> int:
    """llama.cpp's get_rng_seed on a seed given as a (possibly negative) integer: -1 / None / 0xFFFFFFFF draw a
    random 32-bit seed (std::random_device), anything else is the seed modulo 2^32 (`-s -2` = 0xFFFFFFFE)."""
    if seed is None:
        seed = LLAMA_DEFAULT_SEED
    seed = int(seed) % (1 << 32)
    if seed == LLAMA_DEFAULT_SEED:
        return secrets.randbits(32)
    return seed


class MT19937:
    """std::mt19937. `next_u32()` returns the next tempered 32-bit output."""

    def __init__(self, seed: int = 5489):
        self.seed(seed)

    def seed(self, seed: int) -> None:
        mt = [0] * _N
        x = int(seed) & 0xFFFFFFFF
        mt[0] = x
        for i in range(1, _N):
            x = (1812433253 * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
            mt[i] = x
        self._mt = np.array(mt, dtype=np.uint32)  # (624,)
        self._out: list[int] = []
        self._pos = 0

    def _twist(self) -> None:
        """The 624-word state update, vectorised in the four chunks whose inputs are already final."""
        mt = self._mt

        def step(lo: int, hi: int) -> None:
            i = np.arange(lo, hi)
            y = (mt[i] & _UPPER) | (mt[(i + 1) % _N] & _LOWER)
            mt[i] = mt[(i + _M) % _N] ^ (y >> np.uint32(1)) ^ np.where(y & np.uint32(1), _MATRIX_A, np.uint32(0))

        step(0, _N - _M)            # reads old words only
        step(_N - _M, 2 * (_N - _M))  # reads words 0..226, final after the first chunk
        step(2 * (_N - _M), _N - 1)
        step(_N - 1, _N)            # reads mt[0] (new) and mt[396] (new)
        y = mt.copy()
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        y ^= y >> np.uint32(18)
        self._out = y.tolist()
        self._pos = 0

    def next_u32(self) -> int:
        if self._pos >= len(self._out):
            self._twist()
        v = self._out[self._pos]
        self._pos += 1
        return v

    def canonical_double(self) -> float:
        """generate_canonical<double, 53>: two outputs, the first the low word."""
        lo = float(self.next_u32())
        hi = float(self.next_u32())
        ret = (lo + hi * 4294967296.0) / 18446744073709551616.0  # the sum rounds to double, the division is exact
        if ret >= 1.0:
            ret = float(np.nextafter(1.0, 0.0))
        return ret

    def canonical_float(self) -> np.float32:
        """generate_canonical<float, 24>: one output rounded to float, divided by 2^32 in float."""
        ret = np.float32(self.next_u32()) / np.float32(4294967296.0)
        if ret >= np.float32(1.0):
            ret = np.nextafter(np.float32(1.0), np.float32(0.0))
        return np.float32(ret)

    def uniform_float(self, a: float = 0.0, b: float = 1.0) -> np.float32:
        """std::uniform_real_distribution<float>(a, b)(rng)."""
        return np.float32(self.canonical_float() * (np.float32(b) - np.float32(a)) + np.float32(a))


def discrete_draw(rng: MT19937, weights: np.ndarray) -> int:
    """std::discrete_distribution<int>(weights.begin(), weights.end())(rng) as libstdc++ computes it.
    weights: (n,) float32 (llama.cpp passes the candidates' float probabilities)."""
    n = weights.shape[0]
    if n < 2:
        return 0  # libstdc++ keeps no table for fewer than two weights and draws nothing
    w = np.asarray(weights, dtype=np.float32).astype(np.float64)  # (n,)
    total = np.add.accumulate(w)[-1]  # std::accumulate: left to right in double
    cp = np.add.accumulate(w / total)  # normalise each, then std::partial_sum in double
    cp[-1] = 1.0
    u = rng.canonical_double()
    return int(np.searchsorted(cp, u, side="left"))  # std::lower_bound
