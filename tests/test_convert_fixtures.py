"""Fixture writers for the converter tests, written without torch: torch-format zip checkpoints (hand-emitted
pickle opcodes, exactly the pattern torch.save produces for a state dict) and safetensors files.
Also checks that these writers round-trip through the converter's readers."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from llamacpy.convert.pth import load_state_dict
from llamacpy.convert.safetensors import load_safetensors

_STORAGE = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}


def bf16_words(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 words by truncation (any bf16 values will do for fixtures)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_to_f32(w: np.ndarray) -> np.ndarray:
    return (w.astype(np.uint32) << 16).view(np.float32)


def _raw(arr: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        assert arr.dtype == np.uint16
    elif dtype == "F16":
        arr = arr.astype(np.float16)
    else:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr).tobytes()


# ------------------------------------------------------------------------------------------------- pickle
def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def state_dict_pickle(entries: list[tuple[str, str, str, int, int, tuple, tuple]]) -> bytes:
    """Pickle (protocol 2) of {name: tensor} as torch.save writes it. Each entry:
    (name, dtype, storage key, storage numel, storage offset, shape, stride)."""
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    for name, dtype, key, numel, offset, shape, stride in entries:
        out += _u(name)
        out += b"ctorch._utils\n_rebuild_tensor_v2\n"
        pid = _tuple([_u("storage"), f"ctorch\n{_STORAGE[dtype]}\n".encode(), _u(key), _u("cpu"), _i(numel)])
        args = [pid + b"Q", _i(offset), _tuple([_i(d) for d in shape]), _tuple([_i(s) for s in stride]),
                b"\x89", b"ccollections\nOrderedDict\n)R"]
        out += _tuple(args) + b"R"
    out += b"u."  # SETITEMS, STOP
    return bytes(out)


def write_torch_zip(path: Path, tensors: dict[str, tuple[np.ndarray, str]], *, pickle_bytes: bytes | None = None):
    """A torch-format zip checkpoint of `tensors` ({name: (array, dtype)}, bf16 arrays as uint16 words), one
    storage per tensor, contiguous. `pickle_bytes` replaces data.pkl (for hostile-pickle tests)."""
    stem = path.stem
    entries, blobs = [], []
    for k, (name, (arr, dtype)) in enumerate(tensors.items()):
        shape = tuple(arr.shape)
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        entries.append((name, dtype, str(k), int(arr.size), 0, shape, tuple(stride)))
        blobs.append((f"{stem}/data/{k}", _raw(arr, dtype)))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{stem}/data.pkl", pickle_bytes if pickle_bytes is not None else state_dict_pickle(entries))
        z.writestr(f"{stem}/byteorder", "little")
        for member, data in blobs:
            z.writestr(member, data)
        z.writestr(f"{stem}/version", "3\n")


# ------------------------------------------------------------------------------------------------- safetensors
def write_safetensors(path: Path, tensors: dict[str, tuple[np.ndarray, str]]) -> None:
    header, blobs, pos = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (arr, dtype) in tensors.items():
        raw = _raw(arr, dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ------------------------------------------------------------------------------------------------- tests
def _sample():
    rng = np.random.default_rng(0)
    return {
        "a.weight": (rng.standard_normal((6, 4)).astype(np.float32), "F32"),
        "b.weight": (rng.standard_normal((5,)).astype(np.float16), "F16"),
        "c.weight": (bf16_words(rng.standard_normal((3, 8))), "BF16"),
    }


def test_torch_zip_roundtrip(tmp_path):
    tensors = _sample()
    write_torch_zip(tmp_path / "ckpt.pth", tensors)
    sd = load_state_dict(tmp_path / "ckpt.pth")
    assert list(sd) == list(tensors)
    for name, (arr, dtype) in tensors.items():
        assert sd[name].dtype == dtype and sd[name].shape == arr.shape
        np.testing.assert_array_equal(sd[name].load(), arr)


def test_torch_strided_views(tmp_path):
    """A tensor that is a transposed view with an offset into a shared storage."""
    base = np.arange(40, dtype=np.float32)
    entries = [("t.weight", "F32", "0", 40, 4, (3, 4), (1, 3))]  # t[i, j] = base[4 + i + 3 j]
    p = tmp_path / "v.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("v/data.pkl", state_dict_pickle(entries))
        z.writestr("v/data/0", base.tobytes())
    t = load_state_dict(p)["t.weight"].load()
    np.testing.assert_array_equal(t, np.array([[4 + i + 3 * j for j in range(4)] for i in range(3)], np.float32))


def test_safetensors_roundtrip(tmp_path):
    tensors = _sample()
    write_safetensors(tmp_path / "m.safetensors", tensors)
    st = load_safetensors(tmp_path / "m.safetensors")
    for name, (arr, dtype) in tensors.items():
        assert st[name].dtype == dtype
        np.testing.assert_array_equal(st[name].load(), arr)
