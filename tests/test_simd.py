"""The SIMD layer: level choice (isa.py) and the explicit-SIMD decode kernels on every level this CPU runs.

Kernels are checked against the numpy reference: gguf.quants.dequantize, then a float64 matmul with the
activations as llama.cpp's Q8_0 sees them. The kernels sum the integer products exactly and scale per block in
f32, so the only error is f32 accumulation order: 1e-5 of the output's max magnitude (about 100 f32 ulps of
that scale, for at most a few hundred f32 terms of that size; measured ~1e-7).
Levels this CPU lacks are not run (they cannot be: the instructions would fault) -- the test ids name them,
and the skip says which; `available()` decides, as in production.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from llamacpy.kernels import isa, legacy_simd, q8, simd
from test_kernels import random_blocks

X86 = ["avx512vnni", "avxvnni", "avx2"]
HAVE = isa.available()


def _need(level):
    if level not in HAVE:
        pytest.skip(f"this CPU ({isa.host_cpu_name()}) cannot run {level}; it runs {', '.join(HAVE)}")


@pytest.mark.parametrize("level", X86 + ["neon"])
@pytest.mark.parametrize("typ", [T.Q4_0, T.Q8_0], ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 32), (37, 96), (70, 160), (9, 2080)])
def test_simd_matvec_matches_reference(level, typ, n_out, n_in):
    """Odd shapes: 1..65 blocks per row (padding to the 64-byte step), row counts not a multiple of anything,
    1..8 tokens (the decode path's batch sizes)."""
    _need(level)
    rng = np.random.default_rng(n_out * 1000 + n_in + int(typ))
    raw = random_blocks(int(typ), n_out, n_in, rng)
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    packed = legacy_simd.repack_rows(int(typ), raw, n_out, n_in, level)
    tok = simd.token(level)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        qx, dx, _ = q8.quantize_q8_0(x)
        ref = q8.fake_quant_q8_0(x).astype(np.float64) @ w.T
        y = np.full((n, n_out), np.nan, np.float32)
        legacy_simd.MV[int(typ)](tok, *packed, *legacy_simd.prep(int(typ), level, qx, dx), y)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n)


@pytest.mark.parametrize("level", X86)
def test_extreme_quants_exact(level):
    """All weights at their extremes (Q8_0: -128 and 127, Q4_0: nibbles 0 and 15) times activations at +-127:
    the integer sums must be exact (no int16 saturation in pmaddubsw, the sign trick's |-128| = 128, VNNI's
    +128 offset). One block, scales 1.0, so y is the integer dot product itself."""
    _need(level)
    tok = simd.token(level)
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    for typ, qbytes in ((T.Q8_0, np.array([-128, 127] * 16, np.int8).view(np.uint8)),
                        (T.Q4_0, np.array([0xF0, 0x0F] * 8, np.uint8))):
        raw = np.concatenate([one, qbytes])[None]  # (1, bytes)
        w = dequantize(raw, typ).reshape(1, 32).astype(np.float64)
        x = np.where(np.arange(32) % 3 == 0, -127.0, 127.0).astype(np.float32)[None]
        qx, dx, _ = q8.quantize_q8_0(x)
        assert dx[0, 0] == 1.0 and np.all(np.abs(qx) == 127)
        y = np.empty((1, 1), np.float32)
        legacy_simd.MV[int(typ)](tok, *legacy_simd.repack_rows(int(typ), raw, 1, 32, level),
                                 *legacy_simd.prep(int(typ), level, qx, dx), y)
        assert y[0, 0] == (w @ qx[0].astype(np.float64))[0], (typ.name, level)


def test_level_choice_from_features():
    avx512 = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni"}
    assert isa.available(avx512) == ["avx512vnni", "avxvnni", "avx2", "generic"]  # EVEX form of 256-bit vpdpbusd
    assert isa.detect(avx512) == "avx512vnni"
    assert isa.detect({"avx2", "fma", "f16c", "avxvnni"}) == "avxvnni"
    assert isa.detect({"avx2", "fma", "f16c"}) == "avx2"
    assert isa.detect({"sse2", "avx"}) == "generic"
    assert isa.detect({"neon", "dotprod"}) == "neon"  # verified on an emulated AArch64 (test_neon_emulated.py)
    assert isa.detect({"neon"}) == "generic"  # no dotprod (e.g. Cortex-A53/A72): the auto-vectorised kernels
    assert isa.choose("neon", {"neon", "dotprod"}) == "neon"
    assert isa.choose("AVX2", avx512) == "avx2" and isa.choose("", avx512) == "avx512vnni"


@pytest.mark.parametrize("env", ["avx512vnni", "neon", "sse9"])
def test_forced_level_refused_when_absent(env):
    with pytest.raises(isa.IsaError, match="LLAMACPY_ISA"):
        isa.choose(env, {"avx2", "fma", "f16c"})


def test_forcing_an_absent_level_is_one_clear_line(tmp_path):
    """The CLI turns the refusal into one line naming the variable (no traceback)."""
    import os
    import subprocess
    import sys

    lacking = next((lv for lv in ("neon", "avx512vnni") if lv not in HAVE), None)
    assert lacking is not None  # no CPU has both
    from shared import models_dir

    env = dict(os.environ, LLAMACPY_ISA=lacking)
    model = str(models_dir() / "stories260K.gguf")  # F32: no SIMD kernel is ever called -- refused at load
    for cmd in (["bench", "-m", model, "-p", "0", "-n", "1", "-r", "1"], ["run", "-m", model, "-p", "hi", "-n", "1"]):
        r = subprocess.run([sys.executable, "-m", "llamacpy", *cmd], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode != 0
        assert "LLAMACPY_ISA" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("level", X86 + ["neon"])
@pytest.mark.parametrize("typ", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n_out,n_in", [(1, 256), (37, 768), (9, 2304)])
def test_simd_kquant_matches_reference(level, typ, n_out, n_in):
    """Q4_K / Q6_K on Q8_K activations; 1, 3 and 9 super-blocks per row (Q4_K: padding to the level's chunk
    groups)."""
    from llamacpy.kernels import kquants_simd as KS

    _need(level)
    rng = np.random.default_rng(n_out * 7 + n_in + int(typ))
    raw = random_blocks(int(typ), n_out, n_in, rng)
    w = dequantize(raw, typ).reshape(n_out, n_in).astype(np.float64)
    packed = KS.repack_rows(int(typ), raw, n_out, n_in, level)
    tok = simd.token(level)
    for n in (1, 3, 8):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        qx, d, bsums = q8.quantize_q8_k(x)
        ref = q8.fake_quant_q8_k(x).astype(np.float64) @ w.T
        y = np.full((n, n_out), np.nan, np.float32)
        KS.MV[int(typ)](tok, *packed, *KS.prep(int(typ), level, qx, d, bsums), y)
        assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max(), (level, n)


def test_info_and_bench_print_the_level(capsys, monkeypatch):
    from llamacpy import bench, cli_info
    from llamacpy.kernels import repack_cache
    from shared import models_dir

    monkeypatch.setattr(repack_cache, "_enabled", None)  # restored afterwards (--no-repack-cache sets it)
    monkeypatch.setenv("LLAMACPY_REPACK_CACHE", "/tmp/somewhere-llamacpy")
    assert cli_info.main([str(models_dir() / "stories260K.gguf"), "--no-tensors"]) == 0
    out = capsys.readouterr().out
    assert f"SIMD level {isa.level()}" in out and "Repack cache: /tmp/somewhere-llamacpy" in out
    assert bench.main(["-m", str(models_dir() / "stories260K.gguf"), "-p", "0", "-n", "2", "-r", "1", "-t", "1",
                       "-o", "json", "--no-repack-cache"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)[0]["isa"] == isa.level()
    assert not repack_cache.enabled()
