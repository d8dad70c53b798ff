"""Compute kernels: weight matrices in their file type and the matmuls over them.

Owns: `make_linear(ggml_type, raw, shape, name) -> Linear` -- a weight matrix of shape (n_out, n_in) held in
its GGUF type (a zero-copy view of the mmap, or a one-time repack), with
    `linear(x, out=None)`: x (n_tokens, n_in) float32 -> (n_tokens, n_out) float32
    `linear.get_rows(ids)`: dequantized rows (len(ids), n_in) float32 (embedding lookup)
`fuse_linears([...])` (one decode call for q/k/v or gate/up over the same input), and `set_num_threads(n)`.
The SIMD level of the explicit kernels: `kernels.isa.level()` (LLAMACPY_ISA forces one); the on-disk cache of
repacked weights: `kernels.repack_cache` (LLAMACPY_REPACK_CACHE, LLAMACPY_NO_REPACK_CACHE).

Must not: know about layers, attention or the model (model.py composes these).
"""

from .linear import FusedLinear, Linear, fuse_linears, get_num_threads, make_linear, set_num_threads

__all__ = ["Linear", "FusedLinear", "make_linear", "fuse_linears", "set_num_threads", "get_num_threads"]
