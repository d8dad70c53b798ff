"""`llamacpy quantize`: per-tensor types, bytes and metadata against llama-quantize's own output, the
stories260K row-size policy, the override flags, and bad input (no partial output, one clear error line).

Checked against ../shared/models/tiny-llama-{TYPE}.gguf (llama-quantize b4748, default mixes, from
golden/hf-tiny-llama/llamacpp-f32.gguf): same tensor order, same type per tensor, same bytes for every tensor
(legacy types and all k-quants: the k-quant bytes are identical, so no error-based fallback comparison is
needed), same metadata keys/types/values in the same order.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from llamacpy import quantize as qz
from llamacpy import quants as Q
from llamacpy.errors import GGUFError, LlamacpyError
from llamacpy.gguf_file import GGUFFile
from shared import golden_dir, models_dir

MIXES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
         "Q5_K_S", "Q5_K_M", "Q6_K"]
FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
              "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "F32": 0,
              "F16": 1, "BF16": 32}


def _src() -> str:
    return str(golden_dir() / "hf-tiny-llama" / "llamacpp-f32.gguf")


def _run(*argv) -> int:
    return qz.main([*map(str, argv), "--no-progress"])


def _metadata_equal(a: GGUFFile, b: GGUFFile, skip=()) -> None:
    keys_a = [k for k in a.metadata if k not in skip]
    keys_b = [k for k in b.metadata if k not in skip]
    assert keys_a == keys_b
    for k in keys_a:
        assert a.metadata_types[k] == b.metadata_types[k], k
        va, vb = a.metadata[k], b.metadata[k]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb), k
        else:
            assert va == vb, k


DEFAULT_MIXES = ("Q8_0", "Q4_K_M")  # every other mix runs with -m slow (test_quants checks Q4_0's bytes too)


@pytest.mark.parametrize("mix", [pytest.param(m, marks=() if m in DEFAULT_MIXES else pytest.mark.slow)
                                 for m in MIXES])
def test_matches_llama_quantize(tmp_path, mix, capsys):
    out = tmp_path / "out.gguf"
    assert _run(_src(), out, mix.lower()) == 0  # names are case-insensitive
    assert "quant size" in capsys.readouterr().out
    ours, ref = GGUFFile(out), GGUFFile(models_dir() / f"tiny-llama-{mix}.gguf")
    assert list(ours.tensors) == list(ref.tensors)  # llama.cpp's order: non-layer, then by layer and name
    for name, ti in ref.tensors.items():
        mine = ours.tensors[name]
        assert (mine.type_name, mine.shape) == (ti.type_name, ti.shape), name
        assert np.array_equal(ours.tensor_bytes(name), ref.tensor_bytes(name)), f"{mix} {name} bytes differ"
    _metadata_equal(ours, ref)  # incl. quantization_version then file_type appended last
    assert ours.metadata["general.file_type"] == FILE_TYPES[mix]
    assert ours.metadata["general.quantization_version"] == 2


@pytest.mark.parametrize("kind", ["F16", "BF16", "F32"])
def test_float_targets(tmp_path, kind):
    out = tmp_path / "out.gguf"
    assert _run(_src(), out, kind) == 0
    ours, src = GGUFFile(out), GGUFFile(_src())
    # the reference bytes: the F32 source itself, or llama.cpp's converter's f16/bf16 files of the same weights
    ref = src if kind == "F32" else GGUFFile(golden_dir() / "hf-tiny-llama" / f"llamacpp-{kind.lower()}.gguf")
    assert set(ours.tensors) == set(src.tensors)  # (in llama-quantize's order, checked in test_matches_llama_quantize)
    for name, ti in ours.tensors.items():
        expect = Q.TYPE_BY_NAME[kind] if len(ti.shape) == 2 else Q.F32  # norms (1-D) stay F32
        assert ti.ggml_type == expect == ref.tensors[name].ggml_type, name
        assert np.array_equal(ours.tensor_bytes(name), ref.tensor_bytes(name)), name
    assert ours.metadata["general.file_type"] == FILE_TYPES[kind]


@pytest.mark.parametrize("source,mix", [("f16", "Q8_0"), ("bf16", "Q4_K_M"), pytest.param("f16", "Q5_K_S",
                                                                                          marks=pytest.mark.slow)])
def test_quantize_from_f16_bf16_gguf_gives_llama_quantize_bytes(tmp_path, source, mix):
    """The README's workflow: convert to F16/BF16, then quantize. The checkpoint is bf16, so its F16/BF16 GGUFs
    hold the F32 file's exact values, and the result must be llama-quantize's bytes (made from the F32 file)."""
    out = tmp_path / "out.gguf"
    assert _run(golden_dir() / "hf-tiny-llama" / f"llamacpp-{source}.gguf", out, mix) == 0
    ours, ref = GGUFFile(out), GGUFFile(models_dir() / f"tiny-llama-{mix}.gguf")
    assert list(ours.tensors) == list(ref.tensors)
    for name, ti in ref.tensors.items():
        assert (ours.tensors[name].type_name, ours.tensors[name].shape) == (ti.type_name, ti.shape), name
        assert np.array_equal(ours.tensor_bytes(name), ref.tensor_bytes(name)), f"{source}->{mix} {name}"
    assert ours.metadata["general.file_type"] == FILE_TYPES[mix]


def test_numeric_ftype_and_aliases(tmp_path):
    assert qz.parse_ftype("15").name == "Q4_K_M"
    assert qz.parse_ftype("q4_k").name == "Q4_K_M"
    assert qz.parse_ftype("Q3_K").name == "Q3_K_M"
    assert qz.parse_ftype("bf16").ftype == 32
    out = tmp_path / "out.gguf"
    assert _run(_src(), out, "17", "-t", "1") == 0
    assert GGUFFile(out).metadata["general.file_type"] == 17


def test_flags_pure_leave_output_overrides(tmp_path):
    out = tmp_path / "a.gguf"
    assert _run(_src(), out, "Q4_K_M", "--pure") == 0
    types = {n: t.type_name for n, t in GGUFFile(out).tensors.items() if len(t.shape) == 2}
    assert set(types.values()) == {"Q4_K"}  # output.weight too, no _M bumps

    assert _run(_src(), out, "Q4_0", "--leave-output-tensor") == 0
    f = GGUFFile(out)
    assert f.tensors["output.weight"].type_name == "F32" and f.tensors["token_embd.weight"].type_name == "Q4_0"

    assert _run(_src(), out, "Q4_K_M", "--output-tensor-type", "q8_0", "--token-embedding-type", "F16") == 0
    f = GGUFFile(out)
    assert f.tensors["output.weight"].type_name == "Q8_0"
    assert f.tensors["token_embd.weight"].type_name == "F16"
    assert f.tensors["blk.1.attn_v.weight"].type_name == "Q6_K"  # the mix is otherwise unchanged


def test_type_rules_on_a_bigger_model():
    """use_more_bits and the layer-fraction rules on a 32-layer llama with GQA 4 (no data needed)."""
    info = qz.ModelInfo("llama", 32, 32, 8, 0, True, 32)
    plans = {}
    for mix in ("Q4_K_M", "Q3_K_M", "Q4_K_S", "Q2_K", "Q3_K_L"):
        p = qz.TypePlanner(info, qz.FTYPES[mix], None)
        ft = qz.FTYPES[mix].default_type
        v = [Q.type_name(p.choose(f"blk.{i}.attn_v.weight", 4096, ft)) for i in range(32)]
        d = [Q.type_name(p.choose(f"blk.{i}.ffn_down.weight", 11008, ft))
             for i in range(32)]
        plans[mix] = (v, d)
    more = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert [i for i, t in enumerate(plans["Q4_K_M"][0]) if t == "Q6_K"] == more
    assert [i for i, t in enumerate(plans["Q4_K_M"][1]) if t == "Q6_K"] == more
    assert plans["Q3_K_M"][0][:2] == ["Q5_K", "Q5_K"] and set(plans["Q3_K_M"][0][2:]) == {"Q4_K"}
    assert plans["Q3_K_M"][1][:2] == ["Q5_K", "Q5_K"] and set(plans["Q3_K_M"][1][2:]) == {"Q4_K"}
    assert plans["Q4_K_S"][0][:4] == ["Q5_K"] * 4 and set(plans["Q4_K_S"][0][4:]) == {"Q4_K"}
    assert plans["Q4_K_S"][1][:4] == ["Q5_K"] * 4 and set(plans["Q4_K_S"][1][4:]) == {"Q4_K"}
    assert set(plans["Q2_K"][0]) == {"Q4_K"} and set(plans["Q2_K"][1]) == {"Q3_K"}  # GQA 4 -> Q4_K
    assert set(plans["Q3_K_L"][0]) == {"Q5_K"} and set(plans["Q3_K_L"][1]) == {"Q5_K"}
    # tied embeddings: token_embd takes the output rule
    tied = qz.TypePlanner(qz.ModelInfo("llama", 2, 8, 2, 0, False, 2), qz.FTYPES["Q4_0"], None)
    assert tied.choose("token_embd.weight", 256, Q.Q4_0) == Q.Q6_K


def test_tensor_order_and_ndims():
    names = ["blk.10.ffn_up.weight", "output.weight", "blk.2.attn_q.weight", "token_embd.weight",
             "blk.2.attn_k.weight", "output_norm.weight"]
    assert sorted(names, key=qz.tensor_order_key) == [
        "output.weight", "output_norm.weight", "token_embd.weight", "blk.2.attn_k.weight",
        "blk.2.attn_q.weight", "blk.10.ffn_up.weight"]
    assert qz.n_dims((1, 256)) == 1 and qz.n_dims((4, 256)) == 2 and qz.n_dims((8, 1, 256)) == 3


# ---------------------------------------------------------------------------------------------------------
# stories260K: ffn_down rows have 172 elements, not a multiple of 32


@pytest.mark.parametrize("args,culprit", [
    (["Q4_0"], r"ffn_down.*172"), (["Q8_0"], r"ffn_down.*172"), (["Q5_1", "--pure"], r"ffn_down.*172"),
    (["Q4_K_M", "--pure"], r"output.weight.*row length 64.*256"),  # --pure: no fallback, as llama.cpp
])
def test_stories260k_legacy_refused(tmp_path, args, culprit):
    """llama-quantize refuses these ('Unsupported tensor size encountered' / validation failure); so do we,
    naming the tensor, before writing anything."""
    out = tmp_path / "out.gguf"
    with pytest.raises(LlamacpyError, match=culprit):
        _run(models_dir() / "stories260K.gguf", out, *args)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mix,fallbacks", [
    ("Q4_K_M", {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}),  # attn_v/ffn_down of use_more_bits layers are Q6_K
    ("Q6_K", {"Q6_K": "Q8_0"}), ("Q5_K_S", {"Q5_K": "Q5_1"}), ("Q3_K_S", {"Q3_K": "Q4_0"}),
])
def test_stories260k_kquants_fall_back_per_tensor(tmp_path, mix, fallbacks):
    """k-quants fall back per tensor as llama.cpp does (64-wide rows -> 32-block types, ffn_down's 172-wide
    rows -> F16); Q3_K -> Q4_0 is our stand-in for llama.cpp's IQ4_NL."""
    out = tmp_path / "out.gguf"
    assert _run(models_dir() / "stories260K.gguf", out, mix) == 0
    f, src = GGUFFile(out), GGUFFile(models_dir() / "stories260K.gguf")
    for name, ti in f.tensors.items():
        if len(ti.shape) == 1:
            assert ti.type_name == "F32"
        elif "ffn_down" in name:
            assert ti.type_name == "F16", name
        elif name == "output.weight":
            assert ti.type_name == "Q8_0"  # 64 % 256 != 0 -> Q8_0 (llama.cpp's output rule)
        else:
            assert ti.type_name in fallbacks.values(), (name, ti.type_name)
        x = src.tensor(name).astype(np.float32)
        y = Q.dequantize(f.tensor_bytes(name), ti.ggml_type, ti.shape)
        assert np.abs(y - x).max() <= 0.13 * np.abs(x).max() + 1e-6, name  # Q4_0: <= 1/8 of block max


# ---------------------------------------------------------------------------------------------------------
# requantization


def test_requantize_refused_unless_allowed(tmp_path):
    q4 = models_dir() / "tiny-llama-Q4_0.gguf"
    out = tmp_path / "out.gguf"
    with pytest.raises(LlamacpyError, match="requantiz"):
        _run(q4, out, "Q4_K_M")
    assert not out.exists()
    assert _run(q4, out, "Q8_0", "--allow-requantize") == 0
    f, ref = GGUFFile(out), GGUFFile(q4)
    assert f.tensors["blk.0.ffn_up.weight"].type_name == "Q8_0"
    assert f.tensors["output.weight"].type_name == "Q8_0"  # the Q8_0 mix keeps output at Q8_0 (Q6_K in)
    name = "blk.0.ffn_up.weight"
    a = Q.dequantize(f.tensor_bytes(name), Q.Q8_0, f.tensors[name].shape)
    b = Q.dequantize(ref.tensor_bytes(name), Q.Q4_0, ref.tensors[name].shape)
    assert np.abs(a - b).max() <= np.abs(b).max() / 127 + 1e-6
    # same type in and out: bytes copied unchanged, no requantization needed
    assert _run(q4, out, "Q4_0") == 0
    assert all(np.array_equal(GGUFFile(out).tensor_bytes(n), ref.tensor_bytes(n)) for n in ref.tensors)


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_unknown_type_lists_valid_ones(tmp_path):
    with pytest.raises(LlamacpyError, match=r"unknown quantization type 'Q7_K'.*BF16.*Q4_K_M.*Q6_K"):
        _run(_src(), tmp_path / "o.gguf", "Q7_K")
    with pytest.raises(LlamacpyError, match="--output-tensor-type.*valid types"):
        _run(_src(), tmp_path / "o.gguf", "Q4_0", "--output-tensor-type", "iq9")
    with pytest.raises(LlamacpyError, match="quantize:"):
        _run(_src(), tmp_path / "o.gguf")  # missing TYPE
    assert os.listdir(tmp_path) == []


def test_input_not_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all, just text" * 10)
    with pytest.raises(GGUFError, match="not a GGUF"):
        _run(bad, tmp_path / "o.gguf", "Q4_0")
    with pytest.raises(GGUFError, match="no such file"):
        _run(tmp_path / "missing.gguf", tmp_path / "o.gguf", "Q4_0")
    assert sorted(os.listdir(tmp_path)) == ["bad.gguf"]


def test_output_not_writable(tmp_path, monkeypatch):
    with pytest.raises(LlamacpyError, match="does not exist"):
        _run(_src(), tmp_path / "no" / "such" / "dir" / "o.gguf", "Q4_0")
    with pytest.raises(LlamacpyError, match="directory"):
        _run(_src(), tmp_path, "Q4_0")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
    else:  # root ignores folder permissions: refuse the temp file the way a read-only folder would
        from llamacpy import gguf_writer

        monkeypatch.setattr(gguf_writer.tempfile, "mkstemp",
                            lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    try:
        with pytest.raises(LlamacpyError, match=r"cannot write output file \(Permission denied\)"):
            _run(_src(), ro / "o.gguf", "Q4_0")
    finally:
        ro.chmod(0o700)
    assert os.listdir(ro) == []


def test_ctrl_c_leaves_no_output(tmp_path, monkeypatch):
    real = qz.convert_tensor
    calls = {"n": 0}

    def interrupted(f, name, dst):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(f, name, dst)

    monkeypatch.setattr(qz, "convert_tensor", interrupted)
    out = tmp_path / "out.gguf"
    with pytest.raises(KeyboardInterrupt):
        _run(_src(), out, "Q4_K_M")
    assert calls["n"] == 5
    assert os.listdir(tmp_path) == []  # neither the output nor the temporary file
    # an existing output is left untouched by an interrupted run
    out.write_bytes(b"old")
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        _run(_src(), out, "Q4_K_M")
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.gguf"]


def test_cli_error_line_and_success(tmp_path, capsys):
    from cli_inproc import run_cli

    r = run_cli(capsys, "quantize", _src(), tmp_path / "o.gguf", "nope")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown quantization type 'nope'")
    r = run_cli(capsys, "quantize", _src(), tmp_path / "o.gguf", "Q8_0")
    assert r.returncode == 0, r.stderr
    assert "model size" in r.stdout and "quant size" in r.stdout
    assert "quantizing" not in r.stderr  # stderr is not a terminal: no progress bar in the log


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    assert qz.main([_src(), str(tmp_path / "a.gguf"), "Q8_0"]) == 0
    assert "quantizing" not in capsys.readouterr().err  # stderr is not a terminal: no bar in logs
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert qz.main([_src(), str(tmp_path / "b.gguf"), "Q8_0"]) == 0
    assert "quantizing" in term.getvalue() and "tensor" in term.getvalue()
