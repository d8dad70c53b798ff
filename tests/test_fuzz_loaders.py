"""Fuzzing every reader of untrusted bytes: damaged inputs may only end in our own errors.

Targets: the GGUF reader and the config + tokenizer built from its metadata, the legacy GGML/GGMF/GGJT reader,
safetensors headers, torch `.pth` zip + pickle, params.json / config.json, chat templates. Each example starts
from a real file of ../shared and damages it (bytes flipped, boundary integers written over length and count
fields, truncation) or, for JSON and templates, builds odd values. The only outcome allowed besides success is
a `LlamacpyError` whose message is one line (naming the file when there is one); any other exception is a
finding, and so is an example that runs past its time limit (a hang) or allocates more than its memory limit
(a size taken from a header and not checked against the file). The default run is bounded and deterministic
(`derandomize`); `-m slow` runs the same targets with many more, random examples.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpy.errors import LlamacpyError
from shared import models_dir

COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
QUICK = settings(max_examples=60, derandomize=True, **COMMON)
LONG = settings(max_examples=3000, **COMMON)
TIME_LIMIT_S = 30  # per example; generous for a loaded 2-core machine, a real hang never ends
MEMORY_LIMIT = 64 << 20  # peak Python/numpy allocation per example; the inputs are at most 3.5 MB
WORK = Path(tempfile.mkdtemp(prefix="llamacpy-fuzz-"))

BOUNDARY = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40,
            (1 << 63) - 1, 1 << 63, (1 << 64) - 1]

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 65), 1 << 65), st.sampled_from(BOUNDARY),
                         st.floats(allow_nan=True), st.text(max_size=8))
JSON = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                    max_size=4), max_leaves=10)

def _alarm(signum, frame):
    raise TimeoutError("fuzz example ran past its time limit")


@contextmanager
def guarded(name_in_message: str | None):
    """Run one example: our errors are fine (one line, naming the file); anything else fails the test."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    tracemalloc.start()
    try:
        yield
    except LlamacpyError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"error message is not one line: {msg!r}"
        if name_in_message:
            assert name_in_message in msg, f"error does not name the file: {msg!r}"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert peak < MEMORY_LIMIT, f"example allocated {peak >> 20} MiB"


def damage(region: int):
    """Mutations of a file whose interesting part (headers, metadata) is its first `region` bytes."""
    flip = st.tuples(st.just("flip"), st.integers(0, region - 1), st.integers(0, 255))
    word = st.tuples(st.just("word"), st.integers(0, region - 1), st.sampled_from(BOUNDARY))
    return st.tuples(st.lists(st.one_of(flip, word), min_size=1, max_size=6),
                     st.one_of(st.none(), st.none(), st.floats(0.0, 1.0)))


def apply_damage(data: bytes, mutation) -> bytes:
    edits, cut = mutation
    buf = bytearray(data)
    for kind, pos, val in edits:
        if kind == "flip":
            buf[pos] ^= val or 1
        else:
            n = 4 if val < (1 << 32) and pos % 2 else 8
            buf[pos:pos + n] = (val & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
    if cut is not None:
        buf = buf[: int(len(buf) * cut)]
    return bytes(buf)


def _write(name: str, data: bytes) -> Path:
    p = WORK / name
    p.write_bytes(data)
    return p


# -- GGUF reader + config + tokenizer ---------------------------------------------------------------------------
_GGUF = None


def _gguf_source():
    global _GGUF
    if _GGUF is None:
        from llamacpy.gguf_file import GGUFFile

        raw = (models_dir() / "stories260K.gguf").read_bytes()
        _GGUF = (raw, GGUFFile(models_dir() / "stories260K.gguf").data_offset)
    return _GGUF


def gguf_case(mutation) -> None:
    from llamacpy.config import LlamaConfig
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.tokenizer import load_tokenizer

    raw, region = _gguf_source()
    path = _write("f.gguf", apply_damage(raw, mutation))
    with guarded(str(path)):
        f = GGUFFile(path)
        LlamaConfig.from_metadata(f.metadata, str(path))
        for name in list(f.tensors)[:4]:
            f.tensor(name)
        tok = load_tokenizer(f.metadata, str(path))
        ids = tok.tokenize(b"Once upon a time, \xe9\x80 there was <s> a girl", add_bos=True, special=True)
        tok.detokenize(ids)
        tok.detokenize(list(range(tok.n_vocab)), unparse_special=True)


@QUICK
@given(damage(13_000))
def test_fuzz_gguf(mutation):
    gguf_case(mutation)


@pytest.mark.slow
@LONG
@given(damage(13_000))
def test_fuzz_gguf_long(mutation):
    gguf_case(mutation)


_MD = None
MD_KEYS = ["general.architecture", "llama.embedding_length", "llama.attention.head_count", "llama.block_count",
           "llama.feed_forward_length", "llama.attention.head_count_kv", "llama.attention.key_length",
           "llama.rope.dimension_count", "llama.rope.freq_base", "llama.rope.scaling.type",
           "llama.rope.scaling.factor", "llama.attention.layer_norm_rms_epsilon", "llama.context_length",
           "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
           "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
           "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.merges",
           "tokenizer.ggml.pre"]
MD_VALUES = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=4), st.lists(st.text(max_size=4), max_size=600),
                      st.builds(lambda n, v: __import__("numpy").full(n, v), st.integers(0, 600),
                                st.sampled_from([0, -1, 7, 2.5, float("nan")])))


def metadata_case(edits) -> None:
    """Config and tokenizer built from metadata of the right file format but with odd values (what a writer
    with bugs produces): a wrong type, a negative or huge count, NaN, a short array."""
    from llamacpy.config import LlamaConfig
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.tokenizer import load_tokenizer

    global _MD
    if _MD is None:
        _MD = GGUFFile(models_dir() / "stories260K.gguf").metadata
    md = dict(_MD)
    for key, value, delete in edits:
        if delete:
            md.pop(key, None)
        else:
            md[key] = value
    with guarded("m.gguf"):
        LlamaConfig.from_metadata(md, "m.gguf")
        tok = load_tokenizer(md, "m.gguf")
        tok.detokenize(tok.tokenize(b"Once upon a time <s>", add_bos=True, special=True))


METADATA_EDITS = st.lists(st.tuples(st.sampled_from(MD_KEYS), MD_VALUES, st.booleans()), min_size=1, max_size=4)


@QUICK
@given(METADATA_EDITS)
def test_fuzz_gguf_metadata_values(edits):
    metadata_case(edits)


@pytest.mark.slow
@LONG
@given(METADATA_EDITS)
def test_fuzz_gguf_metadata_values_long(edits):
    metadata_case(edits)


def test_invalid_utf8_token_text_loads_as_bytes():
    """A vocabulary entry that is not UTF-8 (the issue's byte flip) is a byte string, as in llama.cpp: its
    piece is those bytes."""
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.tokenizer import load_tokenizer

    raw, _ = _gguf_source()
    needle = b"\x07\x00\x00\x00\x00\x00\x00\x00\xe2\x96\x81Lily"  # token text "▁Lily" (length-prefixed)
    assert raw.count(needle) == 1
    broken = raw.replace(needle, b"\x07\x00\x00\x00\x00\x00\x00\x00\xe2\x96\x81Li\xe9y")
    path = _write("utf8.gguf", broken)
    tok = load_tokenizer(GGUFFile(path).metadata, str(path))
    tid = next(i for i in range(tok.n_vocab) if tok.token_to_piece(i) == b" Li\xe9y")
    # text with that byte tokenizes (llama.cpp's UTF-8 splitting, byte fallback) and comes back byte-exact
    assert tok.detokenize(tok.tokenize(b"Li\xe9y", add_bos=False)) == b"Li\xe9y"
    assert tok.detokenize([tid]) == b"Li\xe9y"


def test_run_survives_invalid_utf8_vocab(tmp_path):
    """The issue's case: `llamacpy run` on a GGUF whose vocabulary has a non-UTF-8 token text."""
    import subprocess
    import sys

    raw, _ = _gguf_source()
    bad = raw.replace(b"\xe2\x96\x81Lily", b"\xe2\x96\x81Li\xe9y")
    path = tmp_path / "bad.gguf"
    path.write_bytes(bad)
    out = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-m", str(path), "-p", "Once upon a time", "-n",
                          "24", "--temp", "0"], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert b"Traceback" not in out.stderr
    assert b"Li\xe9y" in out.stdout  # llama.cpp prints the token's raw bytes too


# -- legacy GGML ------------------------------------------------------------------------------------------------
def legacy_case(name: str, mutation) -> None:
    from llamacpy.convert import ggml

    raw = (models_dir() / "legacy" / name).read_bytes()
    path = _write(name, apply_damage(raw, mutation))
    with guarded(str(path)):
        kvs, specs = ggml.plan(path, gqa=2)
        for s in specs:
            assert s.produce().nbytes == s.nbytes


LEGACY = st.sampled_from(["stories260K-ggml.bin", "stories260K-ggmf1.bin", "stories260K-ggjt3.bin",
                          "stories260K-Q4_0-ggjt3.bin"])


@QUICK
@given(LEGACY, damage(8_000))
def test_fuzz_legacy_ggml(name, mutation):
    legacy_case(name, mutation)


@pytest.mark.slow
@LONG
@given(LEGACY, damage(8_000))
def test_fuzz_legacy_ggml_long(name, mutation):
    legacy_case(name, mutation)


# -- safetensors -------------------------------------------------------------------------------------------------
def _safetensors_bytes(header: dict, payload: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + payload


def safetensors_case(data: bytes) -> None:
    from llamacpy.convert.safetensors import load_safetensors

    path = _write("m.safetensors", data)
    with guarded(str(path)):
        for t in load_safetensors(path).values():
            t.load()


ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "F64", ""]), JSON),
    "shape": st.one_of(st.lists(st.one_of(st.integers(-3, 40), st.sampled_from(BOUNDARY)), max_size=4), JSON),
    "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-8, 200), st.sampled_from(BOUNDARY)), max_size=3),
                              JSON),
})
SAFETENSORS = st.one_of(
    st.tuples(st.dictionaries(st.text(max_size=6), st.one_of(ENTRY, JSON), max_size=4), st.binary(max_size=200))
    .map(lambda hp: _safetensors_bytes(*hp)),
    damage(120).map(lambda m: apply_damage(_safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
         "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}, "__metadata__": {"format": "pt"}},
        bytes(32)), m)),
)


@QUICK
@given(SAFETENSORS)
def test_fuzz_safetensors(data):
    safetensors_case(data)


@pytest.mark.slow
@LONG
@given(SAFETENSORS)
def test_fuzz_safetensors_long(data):
    safetensors_case(data)


# -- torch .pth (zip + pickle) ----------------------------------------------------------------------------------
_PTH = None


def _pth_source():
    global _PTH
    if _PTH is None:
        import zipfile

        raw = (models_dir() / "meta-tiny-llama" / "consolidated.00.pth").read_bytes()
        z = zipfile.ZipFile(models_dir() / "meta-tiny-llama" / "consolidated.00.pth")
        cd = raw.rfind(b"PK\x01\x02", 0, len(raw))  # somewhere in the central directory
        _PTH = (raw, z.getinfo("consolidated.00/data.pkl").header_offset, cd)
    return _PTH


def pth_case(where: str, mutation) -> None:
    from llamacpy.convert.pth import load_state_dict

    raw, pkl, _ = _pth_source()
    if where == "pickle":  # the first 2.2 KB: local header and the pickle of the state dict
        data = apply_damage(raw, mutation)
    else:  # the tail: central directory and end record
        tail_start = len(raw) - 4096
        data = raw[:tail_start] + apply_damage(raw[tail_start:], (mutation[0], None))
        if mutation[1] is not None:
            data = data[: int(len(data) * mutation[1])]
    path = _write("c.pth", data)
    with guarded(str(path)):
        for t in load_state_dict(path).values():
            t.load()


@QUICK
@given(st.sampled_from(["pickle", "tail"]), damage(2_200))
def test_fuzz_pth(where, mutation):
    pth_case(where, mutation)


@pytest.mark.slow
@LONG
@given(st.sampled_from(["pickle", "tail"]), damage(2_200))
def test_fuzz_pth_long(where, mutation):
    pth_case(where, mutation)


# -- params.json / config.json ----------------------------------------------------------------------------------
def _folder(kind: str) -> Path:
    d = WORK / kind
    if not d.is_dir():
        d.mkdir()
        src = models_dir() / ("meta-tiny-llama" if kind == "meta" else "hf-tiny-llama")
        for p in src.iterdir():
            if p.name not in ("params.json", "config.json"):
                os.symlink(p, d / p.name)
    return d


def json_case(kind: str, edits) -> None:
    from llamacpy.convert import hf, meta

    name = "params.json" if kind == "meta" else "config.json"
    cfg = json.loads((models_dir() / ("meta-tiny-llama" if kind == "meta" else "hf-tiny-llama") / name).read_text())
    for key, value, delete in edits:
        if delete:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    d = _folder(kind)
    (d / name).write_text(json.dumps(cfg))
    with guarded(str(d)):
        kvs, specs = (meta if kind == "meta" else hf).plan(d, "f16")
        for s in specs[:3]:
            s.produce()


META_KEYS = ["dim", "multiple_of", "n_heads", "n_kv_heads", "n_layers", "norm_eps", "vocab_size", "rope_theta",
             "ffn_dim_multiplier", "moe"]
HF_KEYS = ["architectures", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
           "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size", "rope_theta", "rope_scaling",
           "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id"]


def edits(keys):
    return st.lists(st.tuples(st.sampled_from(keys), JSON, st.booleans()), min_size=1, max_size=4)


@QUICK
@given(st.sampled_from(["meta", "hf"]), st.data())
def test_fuzz_model_json(kind, data):
    json_case(kind, data.draw(edits(META_KEYS if kind == "meta" else HF_KEYS)))


@pytest.mark.slow
@LONG
@given(st.sampled_from(["meta", "hf"]), st.data())
def test_fuzz_model_json_long(kind, data):
    json_case(kind, data.draw(edits(META_KEYS if kind == "meta" else HF_KEYS)))


# -- chat templates -----------------------------------------------------------------------------------------------
FRAGMENTS = ["{{", "}}", "{%", "%}", "{#", "#}", " for m in messages ", " endfor ", " if ", " else ", " endif ",
             " messages ", "m['content']", "m.role", "messages[0]", "bos_token", "eos_token", "raise_exception('no')",
             "|tojson", "|length", "|trim", "loop.index", "range(3)", "'a'", "+", "*", "~", "[", "]", "(", ")",
             "None", ".items()", " set x = ", "x", "add_generation_prompt", "\n", "text", " is defined ", "1/0",
             "namespace(a=1)", "strftime_now('%Y')", " macro f() ", " endmacro ", "f()", "__class__", "\""]
TEMPLATE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=25).map("".join)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                           "content": st.one_of(st.text(max_size=10), JSON)}), max_size=3)


class _Tok:
    bos_id, eos_id, add_bos = 1, 2, True

    def token_text(self, i):
        return ["<unk>", "<s>", "</s>"][i]


def template_case(source: str, messages) -> None:
    from llamacpy.chat import template_for_model

    with guarded(None):
        t = template_for_model({"tokenizer.chat_template": source}, _Tok())
        t.apply(messages)
        t.apply(messages, add_generation_prompt=False)


@QUICK
@given(TEMPLATE, MESSAGES)
def test_fuzz_chat_templates(source, messages):
    template_case(source, messages)


@pytest.mark.slow
@LONG
@given(TEMPLATE, MESSAGES)
def test_fuzz_chat_templates_long(source, messages):
    template_case(source, messages)


def teardown_module(module):
    shutil.rmtree(WORK, ignore_errors=True)
