"""Bad input to `llamacpy convert`: each case is one clear `error: ...` line, exit status 1, and no output
file (nor a temporary one) left behind."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from llamacpy import cli
from llamacpy.convert import ConvertError, UnsafePickleError, convert
from llamacpy.convert.pth import load_state_dict
from llamacpy.convert.safetensors import load_safetensors
from shared import models_dir
from test_convert_fixtures import write_safetensors, write_torch_zip


def run_cli(src, out_dir, capsys, *extra) -> str:
    """Run the CLI expecting failure; returns the error line. Asserts nothing was written to out_dir."""
    out_dir.mkdir(exist_ok=True)
    rc = cli.main(["convert", str(src), "--outtype", "f32", "--outfile", str(out_dir / "out.gguf"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("error: ") and "\n" not in err, err
    assert list(out_dir.iterdir()) == []
    return err


def copy_model(name, tmp_path, skip=()):
    dst = tmp_path / name
    dst.mkdir()
    for p in (models_dir() / name).iterdir():
        if p.name not in skip:
            shutil.copy(p, dst / p.name)
    return dst


def test_missing_params_json(tmp_path, capsys):
    src = copy_model("meta-tiny-llama", tmp_path, skip=("params.json",))
    assert "params.json is missing" in run_cli(src, tmp_path / "out", capsys)


def test_missing_config_json(tmp_path, capsys):
    src = copy_model("hf-tiny-llama", tmp_path, skip=("config.json",))
    assert "config.json is missing" in run_cli(src, tmp_path / "out", capsys)


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_cli(tmp_path / "empty", tmp_path / "out", capsys)
    assert "config.json" in err and "params.json" in err


def test_meta_shard_missing_by_number(tmp_path, capsys):
    src = copy_model("meta-tiny-llama", tmp_path, skip=("consolidated.01.pth",))
    shutil.copy(models_dir() / "meta-tiny-llama" / "consolidated.01.pth", src / "consolidated.02.pth")
    assert "consolidated.01.pth is missing" in run_cli(src, tmp_path / "out", capsys)


def test_meta_last_shard_missing(tmp_path, capsys):
    """Only consolidated.00.pth of a 2-way split: the merged shapes no longer fit params.json."""
    src = copy_model("meta-tiny-llama", tmp_path, skip=("consolidated.01.pth",))
    err = run_cli(src, tmp_path / "out", capsys)
    assert "shape" in err and "shard missing" in err


def test_meta_inconsistent_shard_shapes(tmp_path, capsys):
    src = copy_model("meta-tiny-llama", tmp_path)
    sd = load_state_dict(src / "consolidated.01.pth")
    tensors = {k: (v.load(), v.dtype) for k, v in sd.items()}
    wq, dt = tensors["layers.1.attention.wq.weight"]
    tensors["layers.1.attention.wq.weight"] = (wq[:-8], dt)
    (src / "consolidated.01.pth").unlink()
    write_torch_zip(src / "consolidated.01.pth", tensors)
    err = run_cli(src, tmp_path / "out", capsys)
    assert "consolidated.01.pth" in err and "layers.1.attention.wq.weight" in err and "shape" in err


def test_hf_shard_missing(tmp_path, capsys):
    src = copy_model("hf-tiny-llama", tmp_path, skip=("model-00002-of-00002.safetensors",))
    assert "model-00002-of-00002.safetensors" in run_cli(src, tmp_path / "out", capsys)
    (src / "model.safetensors.index.json").unlink()  # without the index, the file names tell
    assert "model-00002-of-00002.safetensors is missing" in run_cli(src, tmp_path / "out2", capsys)


def test_hf_shapes_inconsistent_with_config(tmp_path, capsys):
    src = copy_model("hf-tiny-llama", tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (src / "config.json").write_text(json.dumps(cfg))
    err = run_cli(src, tmp_path / "out", capsys)
    assert "k_proj" in err and "[64, 256]" in err and "[128, 256]" in err


def test_unsupported_architecture(tmp_path, capsys):
    src = copy_model("hf-tiny-llama", tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    err = run_cli(src, tmp_path / "out", capsys)
    assert "unsupported architecture" in err and "GPT2LMHeadModel" in err


HOSTILE = [
    ("os", "system"),
    ("builtins", "exec"),
    ("subprocess", "call"),
]


@pytest.mark.parametrize("module,name", HOSTILE)
def test_forbidden_pickle_global_never_runs(tmp_path, capsys, module, name):
    """A checkpoint whose pickle calls a global outside the allow-list: refused before anything runs."""
    marker = tmp_path / "pwned"
    if name == "exec":
        arg = f"open({str(marker)!r}, 'w').write('x')"
        call = f"c{module}\n{name}\n(X".encode() + struct.pack("<I", len(arg)) + arg.encode() + b"tR"
    elif name == "system":
        arg = f"touch {marker}"
        call = f"c{module}\n{name}\n(X".encode() + struct.pack("<I", len(arg)) + arg.encode() + b"tR"
    else:
        call = (f"c{module}\n{name}\n((X".encode() + struct.pack("<I", 5) + b"touch"
                + b"X" + struct.pack("<I", len(str(marker))) + str(marker).encode() + b"ltR")
    payload = b"\x80\x02}(X\x01\x00\x00\x00x" + call + b"u."
    src = copy_model("meta-tiny-llama", tmp_path, skip=("consolidated.00.pth",))
    write_torch_zip(src / "consolidated.00.pth", {}, pickle_bytes=payload)
    err = run_cli(src, tmp_path / "out", capsys)
    assert f"refused to load global '{module}.{name}'" in err and "security" in err
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        load_state_dict(src / "consolidated.00.pth")
    assert not marker.exists()


def test_truncated_safetensors_header(tmp_path, capsys):
    src = copy_model("hf-tiny-llama", tmp_path)
    p = src / "model-00001-of-00002.safetensors"
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    p.write_bytes(data[: 8 + n // 2])  # cut inside the JSON header
    err = run_cli(src, tmp_path / "out", capsys)
    assert "model-00001-of-00002.safetensors" in err and "truncated safetensors header" in err
    p.write_bytes(data[:5])  # not even the length
    assert "truncated safetensors header" in run_cli(src, tmp_path / "out2", capsys)


def test_truncated_safetensors_data(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    write_safetensors(d / "x.safetensors", {"a": (np.zeros((4, 4), np.float32), "F32")})
    data = (d / "x.safetensors").read_bytes()
    (d / "x.safetensors").write_bytes(data[:-10])
    with pytest.raises(ConvertError, match="truncated"):
        load_safetensors(d / "x.safetensors")


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    """A shard whose bytes cannot be read only fails when its tensor's turn comes: the half-written file goes."""
    src = copy_model("meta-tiny-llama", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    import llamacpy.convert.meta as meta

    real = meta._merge

    def broken(name, parts):
        lt = real(name, parts)
        if name == "layers.1.attention.wq.weight":
            def boom():
                raise OSError("disk went away")
            lt.load = boom
        return lt

    monkeypatch.setattr(meta, "_merge", broken)
    with pytest.raises(OSError):
        convert(src, out / "x.gguf", "f32")
    assert list(out.iterdir()) == []
