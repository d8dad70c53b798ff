"""`llamacpy quantize IN.gguf OUT.gguf TYPE [nthreads]` -- llama-quantize, without an importance matrix.

Owns: the command line (llama-quantize's type names, case-insensitive, and its numeric ftype ids), the
per-tensor type plan (llama.cpp b4748's `llama_tensor_get_type`: which tensors are quantized at all, the
_S/_M/_L mixes, output/token-embedding rules, fallbacks for rows that do not fit a block), the metadata of the
output (copied type-exactly, then `general.quantization_version` and `general.file_type` appended as
llama.cpp does), the tensor order (llama.cpp's: non-layer tensors, then layer by layer, by name) and the
progress bar and size summary.

Rows that do not fit (documented choice, see also golden/README.md Notes): for the legacy types llama.cpp
refuses (`Unsupported tensor size encountered`), and so do we, naming the tensor. For k-quants we fall back
per tensor as llama.cpp does (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, and F16 when even 32 does not divide the
row). For Q2_K/Q3_K llama.cpp b4748 falls back to IQ4_NL, which we do not implement: we use Q4_0 there (what
newer llama.cpp does) when 32 divides the row, else F16 as llama.cpp.

Must not: implement codecs (quants/ does) or the file format (gguf_file / gguf_writer do).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import quants as Q
from .errors import GGUFError, LlamacpyError
from .gguf_file import GGUFFile
from .gguf_writer import KV, TensorSpec, copy_kvs, write_gguf

GGML_QNT_VERSION = 2


class QuantizeError(LlamacpyError):
    """Bad arguments or an input that cannot be quantized as asked."""


# llama_ftype ids and the default ggml type of each mix
@dataclass(frozen=True)
class FType:
    name: str
    ftype: int
    default_type: int


FTYPES: dict[str, FType] = {f.name: f for f in [
    FType("F32", 0, Q.F32), FType("F16", 1, Q.F16), FType("BF16", 32, Q.BF16),
    FType("Q4_0", 2, Q.Q4_0), FType("Q4_1", 3, Q.Q4_1), FType("Q8_0", 7, Q.Q8_0),
    FType("Q5_0", 8, Q.Q5_0), FType("Q5_1", 9, Q.Q5_1), FType("Q2_K", 10, Q.Q2_K),
    FType("Q3_K_S", 11, Q.Q3_K), FType("Q3_K_M", 12, Q.Q3_K), FType("Q3_K_L", 13, Q.Q3_K),
    FType("Q4_K_S", 14, Q.Q4_K), FType("Q4_K_M", 15, Q.Q4_K), FType("Q5_K_S", 16, Q.Q5_K),
    FType("Q5_K_M", 17, Q.Q5_K), FType("Q6_K", 18, Q.Q6_K),
]}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize
FTYPE_BY_ID = {f.ftype: f for f in FTYPES.values()}


def parse_ftype(text: str) -> FType:
    """A mix name (case-insensitive, llama-quantize's aliases) or a numeric llama_ftype id."""
    key = text.strip().upper()
    key = ALIASES.get(key, key)
    if key in FTYPES:
        return FTYPES[key]
    if key.isdigit() and int(key) in FTYPE_BY_ID:
        return FTYPE_BY_ID[int(key)]
    valid = ", ".join(f"{f.name} ({f.ftype})" for f in FTYPES.values())
    raise QuantizeError(f"unknown quantization type {text!r}; valid types: {valid}")


def parse_ggml_type(text: str, flag: str) -> int:
    """A tensor type name for --output-tensor-type / --token-embedding-type (case-insensitive)."""
    key = text.strip().upper()
    if key in Q.TYPE_BY_NAME and Q.TYPE_BY_NAME[key] in Q.SUPPORTED:
        return Q.TYPE_BY_NAME[key]
    valid = ", ".join(Q.type_name(t) for t in Q.SUPPORTED)
    raise QuantizeError(f"{flag}: unknown tensor type {text!r}; valid types: {valid}")


# ---------------------------------------------------------------------------------------------------------
# which tensors, in which order, to which type


_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                  "ssm_conv1d.weight", "attn_rel_b.weight", ".position_embd.")
_RWKV_SMALL = tuple(f"time_mix_{s}.weight" for s in
                    ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
                     "decay_w1", "decay_w2", "lerp_fused"))


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing size-1 dimensions (in ggml order) do not count."""
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def tensor_order_key(name: str) -> tuple[int, str]:
    """llama.cpp's weight_name_comparer: layer number (-1 for non-layer tensors), then name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def allows_quantization(name: str, shape: tuple[int, ...], quantize_output: bool) -> bool:
    """llama.cpp's filter: 2-D+ tensors named *weight, except norms, gating, positional and small tensors."""
    if not name.endswith("weight") or n_dims(shape) < 2:
        return False
    if not quantize_output and name == "output.weight":
        return False
    if any(s in name for s in _NOT_QUANTIZED + _RWKV_SMALL):
        return False
    return name not in ("position_embd.weight", "token_types.weight")


@dataclass
class ModelInfo:
    """The hyperparameters the type rules look at."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int
    has_output: bool
    n_attention_wv: int

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:  # LLM_TYPE_70B for llama: 80 layers with grouped-query attention
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelInfo":
        arch = str(f.metadata.get("general.architecture", ""))

        def num(key: str, default: int = 0) -> int:
            v = f.metadata.get(f"{arch}.{key}", default)
            if isinstance(v, np.ndarray):
                v = int(v[0]) if v.size else default
            return int(v)

        n_head = num("attention.head_count")
        names = list(f.tensors)
        n_wv = sum(1 for n in names if "attn_v.weight" in n or "attn_qkv.weight" in n or "attn_kv_b.weight" in n)
        return cls(arch, num("block_count"), n_head, num("attention.head_count_kv", n_head),
                   num("expert_count"), "output.weight" in f.tensors, n_wv)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


class TypePlanner:
    """llama_tensor_get_type for one run: keeps llama.cpp's counters (attn_v and ffn layer indices), so call
    `choose` once per tensor in llama.cpp's order."""

    def __init__(self, info: ModelInfo, ftype: FType, output_type: int | None):
        self.info = info
        self.ftype = ftype.name
        self.output_type = output_type
        self.i_attention_wv = 0
        self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.fallbacks: list[str] = []

    def _layer(self, counter: int, name: str) -> int:
        if self.info.n_expert > 1:  # experts are not consecutive: parse the layer from the name
            m = re.match(r"blk\.(\d+)\.", name)
            if not m:
                raise QuantizeError(f"failed to determine layer for tensor {name}")
            return int(m.group(1))
        return counter

    def choose(self, name: str, ncols: int, new_type: int) -> int:
        """The type for a quantizable tensor under a quantized mix (not --pure); includes the fallback."""
        new_type = self._mix_rule(name, ncols, new_type)
        return self._fallback(name, ncols, new_type)

    def _mix_rule(self, name: str, ncols: int, new_type: int) -> int:  # noqa: C901 (mirrors llama.cpp)
        ft, info = self.ftype, self.info
        n_layer = info.n_layer
        if name == "output.weight" or (not info.has_output and name == "token_embd.weight"):
            if self.output_type is not None:
                return self.output_type
            if info.arch == "falcon" or ncols % Q.QUANT_TYPES[new_type].block_size:
                return Q.Q8_0
            return Q.Q6_K if new_type != Q.Q8_0 else new_type
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return new_type  # only the IQ mixes change it
        if "attn_v.weight" in name:
            if ft == "Q2_K":
                new_type = Q.Q4_K if info.n_gqa >= 4 else Q.Q3_K
            elif ft == "Q3_K_M":
                new_type = Q.Q5_K if self.i_attention_wv < 2 else Q.Q4_K
            elif ft == "Q3_K_L":
                new_type = Q.Q5_K
            elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(self.i_attention_wv, info.n_attention_wv):
                new_type = Q.Q6_K
            elif ft == "Q4_K_S" and self.i_attention_wv < 4:
                new_type = Q.Q5_K
            if info.is_70b and new_type in (Q.Q3_K, Q.Q4_K):
                new_type = Q.Q5_K
            if info.n_expert == 8:
                new_type = Q.Q8_0
            self.i_attention_wv += 1
        elif "attn_k.weight" in name:
            if info.n_expert == 8:
                new_type = Q.Q8_0
        elif "attn_q.weight" in name:
            pass  # only the IQ mixes change it
        elif "ffn_down" in name:
            i_layer = self._layer(self.i_ffn_down, name)
            if ft == "Q2_K":
                new_type = Q.Q3_K
            elif ft == "Q3_K_M":
                new_type = (Q.Q5_K if i_layer < n_layer // 16 else
                            Q.Q4_K if info.arch != "falcon" or _use_more_bits(i_layer, n_layer) else Q.Q3_K)
            elif ft == "Q3_K_L":
                new_type = Q.Q4_K if info.arch == "falcon" else Q.Q5_K
            elif ft == "Q4_K_M":
                if info.arch == "falcon":
                    new_type = (Q.Q6_K if i_layer < n_layer // 16 else
                                Q.Q5_K if _use_more_bits(i_layer, n_layer) else Q.Q4_K)
                elif _use_more_bits(i_layer, n_layer):
                    new_type = Q.Q6_K
            elif ft == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
                new_type = Q.Q6_K
            elif ft == "Q4_K_S" and info.arch != "falcon" and i_layer < n_layer // 8:
                new_type = Q.Q5_K
            self.i_ffn_down += 1
        elif "attn_output.weight" in name:
            if info.arch != "falcon":
                if info.n_expert == 8:
                    if ft in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                        new_type = Q.Q5_K
                else:
                    new_type = {"Q2_K": Q.Q3_K, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K}.get(ft, new_type)
            elif ft == "Q3_K_L":
                new_type = Q.Q4_K
        elif "attn_qkv.weight" in name:
            new_type = {"Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q4_K, "Q4_K_M": Q.Q5_K, "Q5_K_M": Q.Q6_K}.get(ft, new_type)
        elif "ffn_gate" in name:
            self.i_ffn_gate += 1
        elif "ffn_up" in name:
            self.i_ffn_up += 1
        return new_type

    def _fallback(self, name: str, ncols: int, new_type: int) -> int:
        if ncols % Q.QUANT_TYPES[new_type].block_size == 0:
            return new_type
        fallback = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0,  # llama.cpp b4748: IQ4_NL (not implemented here)
                    Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}.get(new_type)
        if fallback is None:
            raise QuantizeError(
                f"tensor {name!r}: row length {ncols} is not a multiple of {Q.type_name(new_type)}'s block size "
                f"{Q.QUANT_TYPES[new_type].block_size} (llama-quantize: 'Unsupported tensor size encountered'); "
                f"choose a k-quant type, which falls back per tensor")
        if ncols % Q.QUANT_TYPES[fallback].block_size:
            fallback = Q.F16
        self.fallbacks.append(f"{name}: {ncols} columns, {Q.type_name(new_type)} -> {Q.type_name(fallback)}")
        return fallback


@dataclass
class Options:
    ftype: FType
    pure: bool = False
    allow_requantize: bool = False
    quantize_output: bool = True
    output_type: int | None = None
    token_embedding_type: int | None = None


def plan(f: GGUFFile, opts: Options) -> tuple[list[str], dict[str, int], list[str]]:
    """(tensor names in output order, target type per tensor, fallback notes). Raises on anything we cannot
    produce, before any output is written."""
    names = sorted(f.tensors, key=tensor_order_key)
    planner = TypePlanner(ModelInfo.from_gguf(f), opts.ftype, opts.output_type)
    default = opts.ftype.default_type
    targets: dict[str, int] = {}
    for name in names:
        ti = f.tensors[name]
        new_type = ti.ggml_type
        if allows_quantization(name, ti.shape, opts.quantize_output):
            new_type = default
            if not opts.pure and Q.QUANT_TYPES[default].quantized:
                new_type = planner.choose(name, ti.shape[-1], new_type)
            if opts.token_embedding_type is not None and name == "token_embd.weight":
                new_type = opts.token_embedding_type
            if opts.output_type is not None and name == "output.weight":
                new_type = opts.output_type
        targets[name] = new_type
        _check_convertible(name, ti.ggml_type, ti.shape, new_type, opts)
    return names, targets, planner.fallbacks


def _check_convertible(name: str, src: int, shape: tuple[int, ...], dst: int, opts: Options) -> None:
    if src == dst:
        return
    if dst not in Q.SUPPORTED:
        raise QuantizeError(f"tensor {name!r}: target type {Q.type_name(dst)} is not supported")
    if src not in Q.SUPPORTED:
        raise QuantizeError(f"tensor {name!r}: cannot convert from type {Q.type_name(src)}")
    if Q.QUANT_TYPES[src].quantized and not opts.allow_requantize:
        raise QuantizeError(f"tensor {name!r}: requantizing from type {Q.type_name(src)} is disabled "
                            f"(pass --allow-requantize; quality suffers)")
    block = Q.QUANT_TYPES[dst].block_size
    if shape[-1] % block:
        raise QuantizeError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of {Q.type_name(dst)}'s "
                            f"block size {block} (llama-quantize: 'Unsupported tensor size encountered')")


# ---------------------------------------------------------------------------------------------------------
# conversion and writing

CHUNK_ELEMENTS = 1 << 20  # elements converted per step: a reused f32 scratch that stays in cache


def convert_rows(raw_rows: np.ndarray, src: int, ncols: int, dst: int) -> np.ndarray:
    """(n_rows, src_row_bytes) uint8 of type src -> (n_rows, dst_row_bytes) uint8 of type dst, converted in
    row chunks through one reused float32 buffer."""
    n_rows = raw_rows.shape[0]
    out = np.empty((n_rows, Q.QUANT_TYPES[dst].row_bytes(ncols)), np.uint8)
    step = max(1, CHUNK_ELEMENTS // max(ncols, 1))
    buf = np.empty((min(step, n_rows), ncols), np.float32)  # (step, ncols)
    for r0 in range(0, n_rows, step):
        rows = raw_rows[r0:r0 + step]
        n = rows.shape[0]
        if src == Q.F16:  # the common case: decode into the scratch without a fresh allocation
            np.copyto(buf[:n], rows.view(np.float16))
            x = buf[:n]
        else:
            x = Q.dequantize(rows, src, (n, ncols))  # (n, ncols) f32
        out[r0:r0 + n] = Q.quantize(x, dst)
    return out


def convert_tensor(f: GGUFFile, name: str, dst: int) -> np.ndarray:
    """The tensor's data in type dst, as uint8 rows (or the raw bytes when the type is unchanged)."""
    ti = f.tensors[name]
    raw = f.tensor_bytes(name)
    if ti.ggml_type == dst:
        return raw
    ncols = ti.shape[-1] if ti.shape else 1
    raw_rows = raw.reshape(-1, raw.shape[-1] if raw.ndim > 1 else raw.size)  # (n_rows, src_row_bytes)
    return convert_rows(raw_rows, ti.ggml_type, ncols, dst)


def output_kvs(f: GGUFFile, ftype: FType) -> list[KV]:
    """Input metadata, type-exact, minus split keys; quantization_version then file_type appended last
    (llama.cpp's gguf_set_val removes and re-appends a key)."""
    from gguf import GGUFValueType

    drop = {"general.quantization_version", "general.file_type", "split.no", "split.count",
            "split.tensors.count"}
    kvs = [kv for kv in copy_kvs(f) if kv.key not in drop]
    kvs.append(KV("general.quantization_version", GGML_QNT_VERSION, GGUFValueType.UINT32))
    kvs.append(KV("general.file_type", ftype.ftype, GGUFValueType.UINT32))
    return kvs


def _progress_factory(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    def wrap(specs):
        # disable=None: tqdm draws only when stderr is a terminal, so logs and pipes get no bar
        bar = tqdm(specs, unit="tensor", desc="quantizing", file=sys.stderr, dynamic_ncols=True, disable=None)
        for spec in bar:
            bar.set_postfix_str(f"{spec.name} -> {Q.type_name(spec.ggml_type)}", refresh=False)
            yield spec

    return wrap


def quantize_file(inp: str, out: str, opts: Options, *, progress: bool = True, log=print) -> dict:
    """Quantize one GGUF file. Returns a summary dict (sizes in bytes, seconds, per-type tensor counts)."""
    t0 = time.perf_counter()
    if os.path.isdir(out):
        raise QuantizeError(f"{out}: is a directory, not an output file")
    with GGUFFile(inp) as f:
        if "general.architecture" not in f.metadata:
            raise GGUFError(f"{inp}: GGUF file has no general.architecture")
        names, targets, fallbacks = plan(f, opts)
        for note in fallbacks:
            log(f"fallback: {note}")
        specs = [TensorSpec(n, f.tensors[n].shape, targets[n], (lambda n=n: convert_tensor(f, n, targets[n])))
                 for n in names]
        write_gguf(out, output_kvs(f, opts.ftype), specs, progress=_progress_factory(progress))
        size_in = sum(t.nbytes for t in f.tensors.values())
    size_out = sum(s.nbytes for s in specs)
    counts: dict[str, int] = {}
    for n in names:
        counts[Q.type_name(targets[n])] = counts.get(Q.type_name(targets[n]), 0) + 1
    return {"size_in": size_in, "size_out": size_out, "seconds": time.perf_counter() - t0, "types": counts,
            "fallbacks": fallbacks}


# ---------------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llamacpy quantize",
        description="Quantize a GGUF model (llama-quantize's type mixes; no importance matrix).",
        epilog="types: " + ", ".join(FTYPES) + " (case-insensitive; Q3_K/Q4_K/Q5_K mean the _M mixes; "
               "numeric llama_ftype ids accepted)")
    p.add_argument("input", help="input GGUF (F32/F16/BF16, or quantized with --allow-requantize)")
    p.add_argument("output", help="output GGUF path")
    p.add_argument("type", help="target type / mix, e.g. Q4_K_M")
    p.add_argument("nthreads", nargs="?", type=int, help="threads (same as -t)")
    p.add_argument("-t", "--threads", type=int, help="number of threads")
    p.add_argument("--pure", action="store_true", help="every quantizable tensor gets TYPE's default type")
    p.add_argument("--allow-requantize", action="store_true", help="allow requantizing quantized tensors")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight unquantized")
    p.add_argument("--output-tensor-type", metavar="T", help="type for output.weight")
    p.add_argument("--token-embedding-type", metavar="T", help="type for token_embd.weight")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # report through LlamacpyError (one line) instead of exiting
        raise _ArgError(message)


def _set_threads(n: int | None) -> None:
    if n is None or n <= 0:
        return
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def main(argv: list[str]) -> int:
    parser = _parser()
    parser.__class__ = _Parser
    try:
        args = parser.parse_args(argv)
    except _ArgError as e:
        raise QuantizeError(f"quantize: {e}") from None
    opts = Options(
        ftype=parse_ftype(args.type),
        pure=args.pure,
        allow_requantize=args.allow_requantize,
        quantize_output=not args.leave_output_tensor,
        output_type=parse_ggml_type(args.output_tensor_type, "--output-tensor-type")
        if args.output_tensor_type else None,
        token_embedding_type=parse_ggml_type(args.token_embedding_type, "--token-embedding-type")
        if args.token_embedding_type else None,
    )
    _set_threads(args.threads or args.nthreads)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    summary = quantize_file(args.input, args.output, opts, progress=not args.no_progress, log=log)
    mib = 1024 * 1024
    types = ", ".join(f"{k}: {v}" for k, v in sorted(summary["types"].items()))
    print(f"model size  = {summary['size_in'] / mib:10.2f} MiB")
    print(f"quant size  = {summary['size_out'] / mib:10.2f} MiB ({opts.ftype.name}; tensors {types})")
    print(f"quantize time = {summary['seconds']:.2f} s -> {args.output}")
    return 0
