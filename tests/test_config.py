"""LlamaConfig from metadata: defaults, GQA, rope scaling, and the errors for bad files."""

import pytest

from llamacpy.config import LlamaConfig
from llamacpy.errors import ModelError
from llamacpy.gguf_file import GGUFFile
from shared import models_dir

BASE = {
    "general.architecture": "llama",
    "llama.embedding_length": 256,
    "llama.feed_forward_length": 768,
    "llama.block_count": 2,
    "llama.attention.head_count": 8,
}


def test_defaults_follow_llama_cpp():
    cfg = LlamaConfig.from_metadata(dict(BASE))
    assert cfg.n_head_kv == 8 and cfg.head_dim_k == 32 and cfg.n_rot == 32
    assert cfg.rope_freq_base == 10000.0 and cfg.rope_freq_scale == 1.0 and cfg.rms_eps == pytest.approx(1e-5)


def test_stories260k():
    cfg = LlamaConfig.from_metadata(GGUFFile(models_dir() / "stories260K.gguf").metadata)
    assert (cfg.n_embd, cfg.n_ff, cfg.n_layer, cfg.n_head, cfg.n_head_kv, cfg.n_rot) == (64, 172, 5, 8, 4, 8)
    assert cfg.n_vocab == 512 and cfg.n_gqa == 2


def test_linear_rope_scaling_and_explicit_head_sizes():
    md = dict(BASE, **{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0,
                       "llama.attention.key_length": 64, "llama.attention.value_length": 64,
                       "llama.rope.dimension_count": 16})
    cfg = LlamaConfig.from_metadata(md)
    assert cfg.rope_freq_scale == 0.25 and cfg.head_dim_k == 64 and cfg.n_rot == 16


@pytest.mark.parametrize("drop", ["llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                                  "llama.feed_forward_length", "general.architecture"])
def test_missing_required_key_is_named(drop):
    md = dict(BASE)
    del md[drop]
    with pytest.raises(ModelError, match=drop.replace(".", r"\.")):
        LlamaConfig.from_metadata(md, "m.gguf")


def test_other_architecture_is_named():
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'"):
        LlamaConfig.from_metadata(dict(BASE, **{"general.architecture": "gpt2"}))


def test_bad_gqa():
    with pytest.raises(ModelError, match="head_count_kv"):
        LlamaConfig.from_metadata(dict(BASE, **{"llama.attention.head_count_kv": 3}))
