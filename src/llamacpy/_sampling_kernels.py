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
