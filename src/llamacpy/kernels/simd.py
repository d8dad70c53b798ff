"""The SIMD layer: LLVM vectors as a numba value type and the few operations the explicit kernels are made of.

Owns: `Isa` tokens (`token(level)`: a value whose numba type names the level, so one kernel source compiles --
and is cached on disk -- separately per level, and every width-dependent operation below picks its form at
compile time from that type), `Vec` (an LLVM vector value), and the operations:
    width(isa)                    bytes per byte-vector: 64 (avx512vnni), 32 (avxvnni, avx2), 16 (neon, generic)
    vload_i8/vload_i32/vload_f32(isa, a, i)   a vector from a C-contiguous array at flat element index i
    vload_f16(isa, a, i)          width/4 f16 values (uint16 bits) at flat index i as f32 lanes (vcvtph2ps)
    vload_f16_x4/_x8(isa, a, i)   f16 bits at flat index i, each repeated 4 (8) times, as f32 lanes
    vload_u8_i32(isa, a, i)       width/4 bytes zero-extended to int32 lanes
    vand(v, m), vshr4(v), vxor80(v)           per-byte AND with a constant, logical >> 4, XOR 0x80
    vshl(v, k), vshr(v, k), vor   per-byte shifts by an integer (constant: an immediate), OR
    vload_i8_i32_x4(isa, a, i)    width/16 int8 at flat index i, each repeated 4 times, as int32 lanes
    vsplat_f32(isa, x)            a float in every f32 lane
    vmul_i32, vadd, vsub          lane-wise integer / float arithmetic
    dot_u8s8(isa, acc, a, b)      acc (int32 lanes) + sums of 4 consecutive a[k] (as u8, < 128 on neon) * b[k]
                                  (as s8): vpdpbusd 512 / 256, or pmaddubsw + pmaddwd (a*b pairs must not
                                  saturate int16: fine for 4-bit a), or sdot
    dot_s8s8b(isa, acc, a, b)     acc + sums of 4 (a[k] + S8S8_BIAS[level]) * b[k], a and b signed: VNNI levels
                                  take a XOR 0x80 as u8 (bias 128, the caller subtracts 128 * sum b), avx2 the
                                  sign trick pmaddubsw(|a|, sign(b, a)) (bias 0), neon sdot (bias 0)
    vcvt(v) int32 -> f32, vmul, vadd, vfma(a, b, c) = a*b + c, vzero_f32/vzero_i32(isa), vhsum(v) (f32 -> float32)
Never emits an instruction its level lacks: each function builds only the IR of the level in its argument's
type; target intrinsics (llvm.x86.*, llvm.aarch64.*) appear only in the levels that have them, and a kernel
is compiled only when called with that level's token -- which isa.level() hands out only where the CPU has it.
Must not: know block formats (legacy_simd.py and friends do) or choose levels (isa.py does).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model, typeof_impl, unbox, NativeValue

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()

WIDTH = {"avx512vnni": 64, "avxvnni": 32, "avx2": 32, "neon": 16, "generic": 16}
S8S8_BIAS = {"avx512vnni": 128, "avxvnni": 128, "avx2": 0, "neon": 0, "generic": 0}


# -- the level token -----------------------------------------------------------------------------------------
class Isa:
    """A level token passed to kernels (its numba type carries the level; the value itself is empty)."""

    def __init__(self, level: str):
        self.level = level

    def __repr__(self):
        return f"Isa({self.level!r})"


class IsaType(types.Type):
    def __init__(self, level: str):
        self.level = level
        super().__init__(name=f"Isa({level})")


_TOKENS: dict[str, Isa] = {}


def token(level: str) -> Isa:
    if level not in WIDTH:
        raise ValueError(f"unknown SIMD level {level!r}")
    return _TOKENS.setdefault(level, Isa(level))


@typeof_impl.register(Isa)
def _typeof_isa(val, c):
    return IsaType(val.level)


register_model(IsaType)(models.OpaqueModel)


@unbox(IsaType)
def _unbox_isa(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


# -- the vector type -----------------------------------------------------------------------------------------
class Vec(types.Type):
    def __init__(self, elem, n: int):
        self.elem, self.n = elem, n
        super().__init__(name=f"Vec({elem}x{n})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.elem).get_value_type(), fe_type.n))


def _vt(elem, n):
    return ir.VectorType(elem, n)


def _level(t) -> str:
    if not isinstance(t, IsaType):
        raise TypeError("first argument must be an Isa token")
    return t.level


def _ptr(context, builder, aty, aval, idx, vty):
    """Pointer to vty at flat element index idx of a C-contiguous array."""
    arr = context.make_array(aty)(context, builder, aval)
    return builder.bitcast(builder.gep(arr.data, [idx]), vty.as_pointer())


def _c_array(a):
    return isinstance(a, types.Array) and a.layout == "C"


@intrinsic
def width(typingctx, isa):
    w = WIDTH[_level(isa)]

    def cg(context, builder, sig, args):
        return ir.Constant(I64, w)

    return types.int64(isa), cg


def _loader(elem_nb, elem_ir, lanes_of_width):
    def impl(typingctx, isa, a, i):
        n = lanes_of_width(WIDTH[_level(isa)])
        if not (_c_array(a) and isinstance(i, types.Integer)):
            return None
        vt = Vec(elem_nb, n)

        def cg(context, builder, sig, args):
            return builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(elem_ir, n)), align=1)

        return vt(isa, a, i), cg

    return impl


vload_i8 = intrinsic(_loader(types.int8, I8, lambda w: w))
vload_i32 = intrinsic(_loader(types.int32, I32, lambda w: w // 4))
vload_f32 = intrinsic(_loader(types.float32, F32, lambda w: w // 4))


@intrinsic
def vload_u8_i32(typingctx, isa, a, i):
    """width/4 bytes at flat index i, zero-extended to int32 lanes (vpmovzxbd)."""
    n = WIDTH[_level(isa)] // 4
    if not (_c_array(a) and isinstance(i, types.Integer)):
        return None

    def cg(context, builder, sig, args):
        v = builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(I8, n)), align=1)
        return builder.zext(v, _vt(I32, n))

    return Vec(types.int32, n)(isa, a, i), cg


@intrinsic
def vmul_i32(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b and a.elem == types.int32):
        return None

    def cg(context, builder, sig, args):
        return builder.mul(args[0], args[1])

    return a(a, b), cg


@intrinsic
def vsub(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b):
        return None

    def cg(context, builder, sig, args):
        if sig.args[0].elem == types.float32:
            return builder.fsub(args[0], args[1], flags=("fast",))
        return builder.sub(args[0], args[1])

    return a(a, b), cg


def _f16_rep(rep):
    def impl(typingctx, isa, a, i):
        n = WIDTH[_level(isa)] // 4  # f32 lanes
        k = n // rep  # f16 values read
        if not (_c_array(a) and isinstance(i, types.Integer)):
            return None

        def cg(context, builder, sig, args):
            h = builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(I16, k)), align=1)
            mask = ir.Constant(_vt(I32, n), [j // rep for j in range(n)])
            h = builder.shuffle_vector(h, ir.Constant(_vt(I16, k), None), mask)
            return builder.fpext(builder.bitcast(h, _vt(ir.HalfType(), n)), _vt(F32, n))

        return Vec(types.float32, n)(isa, a, i), cg

    return impl


vload_f16 = intrinsic(_f16_rep(1))
vload_f16_x4 = intrinsic(_f16_rep(4))
vload_f16_x8 = intrinsic(_f16_rep(8))


def _is_i8(v):
    return isinstance(v, Vec) and v.elem == types.int8


def _splat8(value, n):
    return ir.Constant(_vt(I8, n), [value] * n)


@intrinsic
def vand(typingctx, v, m):
    if not (_is_i8(v) and isinstance(m, types.Integer)):
        return None

    def cg(context, builder, sig, args):
        n = sig.args[0].n
        b = builder.trunc(args[1], I8)
        splat = builder.insert_element(ir.Constant(_vt(I8, n), None), b, ir.Constant(I32, 0))
        splat = builder.shuffle_vector(splat, ir.Constant(_vt(I8, n), None), ir.Constant(_vt(I32, n), [0] * n))
        return builder.and_(args[0], splat)

    return v(v, m), cg


def _splat_int(builder, val, n, ity):
    v = builder.trunc(val, ity) if val.type.width > ity.width else builder.zext(val, ity)
    splat = builder.insert_element(ir.Constant(_vt(ity, n), None), v, ir.Constant(I32, 0))
    return builder.shuffle_vector(splat, ir.Constant(_vt(ity, n), None), ir.Constant(_vt(I32, n), [0] * n))


@intrinsic
def vshl(typingctx, v, k):
    """Per-byte << k (k an integer; a constant k folds to an immediate)."""
    if not (_is_i8(v) and isinstance(k, types.Integer)):
        return None

    def cg(context, builder, sig, args):
        return builder.shl(args[0], _splat_int(builder, args[1], sig.args[0].n, I8))

    return v(v, k), cg


@intrinsic
def vshr(typingctx, v, k):
    """Per-byte logical >> k."""
    if not (_is_i8(v) and isinstance(k, types.Integer)):
        return None

    def cg(context, builder, sig, args):
        return builder.lshr(args[0], _splat_int(builder, args[1], sig.args[0].n, I8))

    return v(v, k), cg


@intrinsic
def vor(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b and a.elem != types.float32):
        return None

    def cg(context, builder, sig, args):
        return builder.or_(args[0], args[1])

    return a(a, b), cg


@intrinsic
def vload_i8_i32_x4(typingctx, isa, a, i):
    """width/16 int8 values at flat index i, each repeated 4 times, sign-extended to width/4 int32 lanes."""
    n = WIDTH[_level(isa)] // 4
    k = n // 4
    if not (_c_array(a) and isinstance(i, types.Integer)):
        return None

    def cg(context, builder, sig, args):
        v = builder.load(_ptr(context, builder, sig.args[1], args[1], args[2], _vt(I8, k)), align=1)
        v = builder.shuffle_vector(v, ir.Constant(_vt(I8, k), None), ir.Constant(_vt(I32, n), [j // 4 for j in range(n)]))
        return builder.sext(v, _vt(I32, n))

    return Vec(types.int32, n)(isa, a, i), cg


@intrinsic
def vsplat_f32(typingctx, isa, x):
    n = WIDTH[_level(isa)] // 4
    if not isinstance(x, types.Float):
        return None

    def cg(context, builder, sig, args):
        v = builder.fptrunc(args[1], F32) if args[1].type != F32 else args[1]
        splat = builder.insert_element(ir.Constant(_vt(F32, n), None), v, ir.Constant(I32, 0))
        return builder.shuffle_vector(splat, ir.Constant(_vt(F32, n), None), ir.Constant(_vt(I32, n), [0] * n))

    return Vec(types.float32, n)(isa, x), cg


@intrinsic
def vshr4(typingctx, v):
    """Logical >> 4 per byte."""
    if not _is_i8(v):
        return None

    def cg(context, builder, sig, args):
        return builder.lshr(args[0], _splat8(4, sig.args[0].n))

    return v(v), cg


@intrinsic
def vxor80(typingctx, v):
    if not _is_i8(v):
        return None

    def cg(context, builder, sig, args):
        return builder.xor(args[0], _splat8(0x80, sig.args[0].n))

    return v(v), cg


def _call(builder, name, ret, argtys, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, argtys), name)
    return builder.call(fn, args)


def _dot_u8s8_ir(builder, level, acc, a, b, n8):
    """acc (<n8/4 x i32>) + 4-sums of a (u8) * b (s8), the level's instruction(s)."""
    n32 = n8 // 4
    v32 = _vt(I32, n32)
    if level == "avx512vnni":
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", v32, [v32] * 3,
                     [acc, builder.bitcast(a, v32), builder.bitcast(b, v32)])
    if level == "avxvnni":
        return _call(builder, "llvm.x86.avx512.vpdpbusd.256", v32, [v32] * 3,
                     [acc, builder.bitcast(a, v32), builder.bitcast(b, v32)])
    if level == "avx2":
        v8, v16 = _vt(I8, 32), _vt(I16, 16)
        p = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", v16, [v8, v8], [a, b])
        q = _call(builder, "llvm.x86.avx2.pmadd.wd", v32, [v16, v16], [p, ir.Constant(v16, [1] * 16)])
        return builder.add(acc, q)
    if level == "neon":
        v8 = _vt(I8, 16)
        return _call(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", v32, [v32, v8, v8], [acc, a, b])
    # generic: plain IR (LLVM lowers it with whatever the CPU has)
    wide = _vt(I32, n8)
    prod = builder.mul(builder.zext(a, wide), builder.sext(b, wide))
    out = acc
    for k in range(4):
        lane = builder.shuffle_vector(prod, ir.Constant(wide, None),
                                      ir.Constant(_vt(I32, n32), [4 * j + k for j in range(n32)]))
        out = builder.add(out, lane)
    return out


def _dot_typer(isa, acc, a, b):
    n8 = WIDTH[_level(isa)]
    ok = (_is_i8(a) and _is_i8(b) and a.n == n8 and b.n == n8 and isinstance(acc, Vec)
          and acc.elem == types.int32 and acc.n == n8 // 4)
    return ok, n8


@intrinsic
def dot_u8s8(typingctx, isa, acc, a, b):
    ok, n8 = _dot_typer(isa, acc, a, b)
    if not ok:
        return None
    level = _level(isa)

    def cg(context, builder, sig, args):
        return _dot_u8s8_ir(builder, level, args[1], args[2], args[3], n8)

    return acc(isa, acc, a, b), cg


@intrinsic
def dot_s8s8b(typingctx, isa, acc, a, b):
    """acc + 4-sums of (a + S8S8_BIAS[level]) * b, a and b signed bytes (see the module doc)."""
    ok, _ = _dot_typer(isa, acc, a, b)
    if not ok:
        return None
    level = _level(isa)

    def cg(context, builder, sig, args):
        return ir_dot_s8s8b(builder, level, args[1], args[2], args[3])

    return acc(isa, acc, a, b), cg


@intrinsic
def vcvt(typingctx, v):
    if not (isinstance(v, Vec) and v.elem == types.int32):
        return None
    rt = Vec(types.float32, v.n)

    def cg(context, builder, sig, args):
        return builder.sitofp(args[0], _vt(F32, sig.args[0].n))

    return rt(v), cg


def _is_f32(*vs):
    return all(isinstance(v, Vec) and v.elem == types.float32 for v in vs) and len({v.n for v in vs}) == 1


@intrinsic
def vmul(typingctx, a, b):
    if not _is_f32(a, b):
        return None

    def cg(context, builder, sig, args):
        return builder.fmul(args[0], args[1], flags=("fast",))

    return a(a, b), cg


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c (contracted to one FMA where the level has it)."""
    if not _is_f32(a, b, c):
        return None

    def cg(context, builder, sig, args):
        return builder.fadd(builder.fmul(args[0], args[1], flags=("fast",)), args[2], flags=("fast",))

    return a(a, b, c), cg


@intrinsic
def vadd(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b):
        return None

    def cg(context, builder, sig, args):
        if sig.args[0].elem == types.float32:
            return builder.fadd(args[0], args[1], flags=("fast",))
        return builder.add(args[0], args[1])

    return a(a, b), cg


@intrinsic
def vzero_f32(typingctx, isa):
    n = WIDTH[_level(isa)] // 4

    def cg(context, builder, sig, args):
        return ir.Constant(_vt(F32, n), None)

    return Vec(types.float32, n)(isa), cg


@intrinsic
def vzero_i32(typingctx, isa):
    n = WIDTH[_level(isa)] // 4

    def cg(context, builder, sig, args):
        return ir.Constant(_vt(I32, n), None)

    return Vec(types.int32, n)(isa), cg


@intrinsic
def vhsum(typingctx, v):
    """Sum of the f32 lanes (pairwise halving: a fixed order, the same on every call)."""
    if not _is_f32(v):
        return None

    def cg(context, builder, sig, args):
        return ir_hsum_f32(builder, args[0])

    return types.float32(v), cg


# -- IR-level steps: the ops above are built from them, and so are the llvmlite micro-kernels of gemm_simd.py
def ir_dot_u8s8(builder, level, acc, a, b):
    """IR of dot_u8s8 on LLVM values (a, b: <width x i8>, acc: <width/4 x i32>)."""
    return _dot_u8s8_ir(builder, level, acc, a, b, a.type.count)


def ir_dot_s8s8b(builder, level, acc, a, b):
    """IR of dot_s8s8b on LLVM values: the same instruction sequence as that op (so the same int32 sums)."""
    n8 = a.type.count
    if S8S8_BIAS[level] == 128:
        return _dot_u8s8_ir(builder, level, acc, builder.xor(a, _splat8(0x80, n8)), b, n8)
    if level == "avx2":
        v8 = _vt(I8, 32)
        absa = _call(builder, "llvm.abs.v32i8", v8, [v8, ir.IntType(1)], [a, ir.Constant(ir.IntType(1), 0)])
        sgnb = _call(builder, "llvm.x86.avx2.psign.b", v8, [v8, v8], [b, a])
        return _dot_u8s8_ir(builder, level, acc, absa, sgnb, n8)
    if level == "neon":
        return _dot_u8s8_ir(builder, level, acc, a, b, n8)
    wide = _vt(I32, n8)
    prod = builder.mul(builder.sext(a, wide), builder.sext(b, wide))
    n32 = n8 // 4
    out = acc
    for k in range(4):
        out = builder.add(out, builder.shuffle_vector(prod, ir.Constant(wide, None), ir.Constant(
            _vt(I32, n32), [4 * j + k for j in range(n32)])))
    return out


def ir_hsum_f32(builder, x):
    """IR of vhsum: the f32 lanes' sum by pairwise halving (the same order as vhsum)."""
    n = x.type.count
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(x, x, ir.Constant(_vt(I32, h), list(range(h))))
        hi = builder.shuffle_vector(x, x, ir.Constant(_vt(I32, h), list(range(h, n))))
        x = builder.fadd(lo, hi)
        n = h
    return builder.extract_element(x, ir.Constant(I32, 0))
