"""Loading a GGUF whose weights or hyper-parameters are wrong: one clear ModelError naming the file and the tensor
or key, never a traceback from deep inside; bad token ids are refused by name."""

import numpy as np
import pytest
from gguf import GGUFValueType as VT

from cli_inproc import run_cli
from llamacpy import Llama
from llamacpy.errors import LlamacpyError, ModelError
from llamacpy.gguf_file import GGUFFile
from llamacpy.gguf_writer import KV, TensorSpec, copy_kvs, write_gguf
from llamacpy.model import LlamaModel
from shared import models_dir
from tiny_models import write_tiny_llama


def rewrite(tmp_path, *, shapes=None, types=None, extra_kvs=(), name="bad.gguf"):
    """The tiny model with some tensors replaced (new shape and/or type, zero data) and metadata added."""
    src = GGUFFile(write_tiny_llama(tmp_path / "src.gguf"))
    shapes, types = shapes or {}, types or {}
    specs = []
    for n, t in src.tensors.items():
        if n in shapes or n in types:
            shape, gtype = shapes.get(n, t.shape), types.get(n, t.ggml_type)
            spec = TensorSpec(n, shape, gtype, lambda: None)
            nbytes = spec.nbytes
            spec.produce = lambda nb=nbytes: np.zeros(nb, np.uint8)
            specs.append(spec)
        else:
            specs.append(TensorSpec(n, t.shape, t.ggml_type, (lambda n=n: src.tensor(n))))
    write_gguf(tmp_path / name, copy_kvs(src) + list(extra_kvs), specs)
    return tmp_path / name


@pytest.mark.parametrize("tensor,shape,needle", [
    ("blk.0.attn_k.weight", (32, 32), r"tensor 'blk\.0\.attn_k\.weight' has shape \(32, 32\), expected \(16, 32\)"),
    ("blk.1.ffn_down.weight", (32, 32), r"tensor 'blk\.1\.ffn_down\.weight' has shape"),
    ("blk.0.attn_norm.weight", (16,), r"tensor 'blk\.0\.attn_norm\.weight' has shape \(16,\), expected \(32,\)"),
])
def test_wrong_shapes_are_named(tmp_path, tensor, shape, needle):
    with pytest.raises(ModelError, match=needle):
        LlamaModel.load(rewrite(tmp_path, shapes={tensor: shape}))


def test_quantized_norm_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"'output_norm\.weight' has type Q8_0; norms must be F32 or F16"):
        LlamaModel.load(rewrite(tmp_path, types={"output_norm.weight": 8}, shapes={"output_norm.weight": (32,)}))


@pytest.mark.parametrize("kvs,needle", [
    ([KV("llama.rope.scaling.type", "yarn", VT.STRING), KV("llama.rope.scaling.factor", 4.0, VT.FLOAT32)],
     "unsupported rope scaling type 'yarn'"),
])
def test_unsupported_hparams(tmp_path, kvs, needle):
    with pytest.raises(ModelError, match=needle):
        LlamaModel.load(rewrite(tmp_path, extra_kvs=kvs))


def test_bad_header_values_through_the_cli_are_one_line(capsys, tmp_path):
    bad = rewrite(tmp_path, extra_kvs=[KV("llama.rope.scaling.type", "yarn", VT.STRING)])
    r = run_cli(capsys, "run", "-m", bad, "-p", "hi", "-n", 1)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "unsupported rope scaling type 'yarn'" in r.stderr and str(bad) in r.stderr


def test_token_ids_outside_the_vocabulary(tmp_path):
    llm = Llama(str(models_dir() / "stories260K.gguf"), n_ctx=64, verbose=False)
    with pytest.raises((LlamacpyError, ValueError, IndexError), match="512|out of range|vocab"):
        llm.eval([1, 512])


def test_logit_bias_for_a_token_outside_the_vocabulary_is_ignored(capsys):
    # llama.cpp's logit-bias sampler skips ids it cannot find among the candidates: same text as without it
    args = ["run", "-m", models_dir() / "stories260K.gguf", "-p", "Once", "-n", 6, "--temp", 0]
    with_bias = run_cli(capsys, *args, "-l", "600+100")
    plain = run_cli(capsys, *args)
    assert with_bias.returncode == plain.returncode == 0, with_bias.stderr
    assert with_bias.stdout == plain.stdout and "Traceback" not in with_bias.stderr


def test_special_token_id_outside_the_vocabulary(tmp_path):
    # llama.cpp keeps its default when a special id in the metadata is out of range (here EOS 9999 -> 2)
    src = GGUFFile(write_tiny_llama(tmp_path / "t.gguf"))
    kvs = [kv if kv.key != "tokenizer.ggml.eos_token_id" else KV(kv.key, 9999, VT.UINT32) for kv in copy_kvs(src)]
    specs = [TensorSpec(n, t.shape, t.ggml_type, (lambda n=n: src.tensor(n))) for n, t in src.tensors.items()]
    write_gguf(tmp_path / "eos.gguf", kvs, specs)
    llm = Llama(str(tmp_path / "eos.gguf"), verbose=False)
    assert llm.token_eos() == 2
