"""SentencePiece-style tokenizer (tokenizer.ggml.model "llama") against llama.cpp's golden outputs.

Golden detok strings (`*-cases.json`) were made by llama-cpp-python's `Llama.detokenize(ids, special=special)`:
it joins llama_token_to_piece of every token and drops one leading space only when the first token is BOS. That is
`detokenize_like_llama_cpp_python`, not llama_detokenize (which strips the first piece's leading space whenever the
vocab adds a space prefix): e.g. ids [259] ("▁▁") give "  " there but " " with llama_detokenize.
"""

from __future__ import annotations

import codecs
import json
import random

import pytest
from shared import golden_dir, models_dir

from llamacpy.errors import TokenizerError
from llamacpy.gguf_file import GGUFFile
from llamacpy.tokenizer import SPMTokenizer, detokenize_like_llama_cpp_python, load_tokenizer

SEPARATOR = b"\n__ggml_vocab_test__\n"


def spm_vocab_path():
    return golden_dir() / "tokenizer" / "ggml-vocab-llama-spm.gguf"


@pytest.fixture(scope="module")
def spm_metadata():
    return GGUFFile(str(spm_vocab_path())).metadata


@pytest.fixture(scope="module")
def spm(spm_metadata):
    return load_tokenizer(spm_metadata, "ggml-vocab-llama-spm.gguf")


@pytest.fixture(scope="module")
def stories():
    path = models_dir() / "stories260K.gguf"
    return load_tokenizer(GGUFFile(str(path)).metadata, str(path))


def read_vocab_test_cases(vocab_path):
    texts = vocab_path.with_name(vocab_path.name + ".inp").read_bytes().split(SEPARATOR)[:-1]
    lines = vocab_path.with_name(vocab_path.name + ".out").read_text().split("\n")
    assert len(lines) >= len(texts)
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines)]


def read_json_cases(name):
    return json.loads((golden_dir() / "tokenizer" / name).read_text())["cases"]


# -- golden data --------------------------------------------------------------------------------------------
def test_loads_as_spm(spm):
    assert isinstance(spm, SPMTokenizer)
    assert spm.n_vocab == 32000
    assert (spm.bos_id, spm.eos_id, spm.unk_id) == (1, 2, 0)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix


def test_llama_cpp_vocab_test_vectors(spm):
    cases = read_vocab_test_cases(spm_vocab_path())
    assert len(cases) == 46
    failures = [(text, expected, spm.tokenize(text, add_bos=False, special=False)) for text, expected in cases
                if spm.tokenize(text, add_bos=False, special=False) != expected]
    assert failures == []


@pytest.mark.parametrize("cases_file, vocab",
                         [("llama-spm-cases.json", "spm"), ("stories260K-vocab-cases.json", "stories")])
def test_golden_cases_ids_and_detok(cases_file, vocab, request):
    tok = request.getfixturevalue(vocab)
    cases = read_json_cases(cases_file)
    assert len(cases) >= 60
    for case in cases:
        ids = tok.tokenize(case["text"].encode("utf-8"), add_bos=case["add_bos"], special=case["special"])
        assert ids == case["ids"], case
        detok = detokenize_like_llama_cpp_python(tok, case["ids"], special=case["special"])
        assert detok.decode("utf-8") == case["detok"], case


# -- behaviour ------------------------------------------------------------------------------------------------
def test_str_and_bytes_give_the_same_ids(spm):
    assert spm.tokenize("naïve café", add_bos=False) == spm.tokenize("naïve café".encode(), add_bos=False)


def test_leading_space_rule(spm):
    assert spm.tokenize(b"Hello", add_bos=False) == [15043]  # "▁Hello": the space prefix
    assert spm.tokenize(b"", add_bos=True) == [1]
    assert spm.tokenize(b"", add_bos=False) == []
    # after a special token the next fragment gets a space prefix again
    assert spm.tokenize(b"a</s>b", add_bos=False, special=True) == [263, 2, 289]


def test_byte_fallback_for_characters_outside_the_vocab(spm):
    ids = spm.tokenize("🦙".encode(), add_bos=False)
    assert ids == [29871, 243, 162, 169, 156]  # "▁" then <0xF0> <0x9F> <0xA6> <0x99>
    assert [spm.token_text(i) for i in ids[1:]] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]


def test_control_token_pieces_only_with_special(spm):
    assert spm.token_to_piece(1, special=False) == b""
    assert spm.token_to_piece(1, special=True) == b"<s>"
    assert spm.token_to_piece(15043) == b" Hello"
    assert spm.token_to_piece(13) == b"\n"  # <0x0A>
    assert spm.token_text(15043) == "▁Hello"


def test_llama_detokenize_semantics(spm):
    ids = spm.tokenize(b"Hello world", add_bos=False)
    assert spm.detokenize(ids) == b"Hello world"  # the first piece loses the prefix space
    with_bos = [spm.bos_id] + ids
    assert spm.detokenize(with_bos) == b" Hello world"  # BOS (empty piece) consumed the one-time strip
    assert spm.detokenize(with_bos, remove_special=True) == b" Hello world"
    assert spm.detokenize(with_bos, unparse_special=True) == b"<s> Hello world"
    assert detokenize_like_llama_cpp_python(spm, with_bos) == b"Hello world"


@pytest.mark.parametrize("text",
                         ["emoji 🦙🔥 end", "日本語のテキスト", "naïve café — déjà vu", "𝄞 mixed ✓ 中文"])
def test_streaming_pieces_rebuild_multibyte_text(stories, text):
    """Byte-fallback tokens split characters; joining raw pieces (and decoding incrementally) gives the text."""
    ids = stories.tokenize(text.encode("utf-8"), add_bos=True)
    pieces = [stories.token_to_piece(i, special=False) for i in ids]
    assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces), "expected a character split over byte tokens"
    assert b"".join(pieces) == b" " + text.encode("utf-8")
    decoder = codecs.getincrementaldecoder("utf-8")()
    streamed = "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True)
    assert streamed == " " + text


def test_eog_contains_eos(spm, stories):
    for tok in (spm, stories):
        assert tok.is_eog(tok.eos_id)
        assert tok.eos_id in tok.eog_ids
        assert not tok.is_eog(tok.bos_id)


def test_add_bos_add_eos_follow_metadata(spm_metadata):
    metadata = dict(spm_metadata, **{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True})
    tok = load_tokenizer(metadata)
    assert tok.tokenize(b"Hello", add_bos=True) == [15043, 2]
    assert tok.tokenize(b"Hello", add_bos=False) == [15043]


def test_add_space_prefix_false(spm_metadata):
    tok = load_tokenizer(dict(spm_metadata, **{"tokenizer.ggml.add_space_prefix": False}))
    assert not tok.token_text(tok.tokenize(b"Hello", add_bos=False)[0]).startswith("▁")
    assert tok.detokenize(tok.tokenize(b" Hello", add_bos=False)) == b" Hello"


def test_user_defined_tokens_are_matched_even_without_special(spm_metadata):
    types = spm_metadata["tokenizer.ggml.token_type"].copy()
    hello = 15043  # "▁Hello" as a user-defined token matches the literal text "▁Hello" only
    types[hello] = 4
    tok = load_tokenizer(dict(spm_metadata, **{"tokenizer.ggml.token_type": types}))
    ids = tok.tokenize("x▁Hello".encode(), add_bos=False, special=False)
    assert hello in ids
    assert tok.token_to_piece(hello) == "▁Hello".encode()  # user-defined pieces are verbatim


# -- bad input ------------------------------------------------------------------------------------------------
def test_missing_tokens_key(spm_metadata):
    metadata = {k: v for k, v in spm_metadata.items() if k != "tokenizer.ggml.tokens"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens") as err:
        load_tokenizer(metadata, "broken.gguf")
    assert "broken.gguf" in str(err.value)


def test_unknown_tokenizer_model(spm_metadata):
    with pytest.raises(TokenizerError, match="'bert'"):
        load_tokenizer(dict(spm_metadata, **{"tokenizer.ggml.model": "bert"}))


def test_missing_tokenizer_model():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        load_tokenizer({"tokenizer.ggml.tokens": ["a"]}, "x.gguf")


def test_short_scores_array(spm_metadata):
    metadata = dict(spm_metadata, **{"tokenizer.ggml.scores": spm_metadata["tokenizer.ggml.scores"][:10]})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.scores"):
        load_tokenizer(metadata)


def test_out_of_range_special_id_keeps_the_default(spm_metadata):
    tok = load_tokenizer(dict(spm_metadata, **{"tokenizer.ggml.bos_token_id": 0xFFFFFFFF}))
    assert tok.bos_id == 1  # as llama.cpp: a bad id is ignored with a warning


def test_add_bos_without_a_bos_token():
    metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>"],
                "tokenizer.ggml.add_bos_token": True}
    with pytest.raises(TokenizerError, match="add_bos_token"):
        load_tokenizer(metadata, "one-token.gguf")


# -- cross-check against llama.cpp itself (the `oracle` extra: pip install -e '.[oracle]'; run by -m slow) ---------
@pytest.mark.slow
def test_random_text_matches_llama_cpp_python(spm):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (the `oracle` extra)")
    oracle = llama_cpp.Llama(str(spm_vocab_path()), vocab_only=True, verbose=False)
    alphabet = list("abcXYZ  \t\n'.,!?0123456789") + [
        "é", "日", "🦙", "\u0301", "\u00a0", "<s>", "</s>", "▁", "  "]
    rng = random.Random(1234)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))).encode()
        for add_bos, special in ((False, False), (True, True)):
            assert spm.tokenize(text, add_bos=add_bos, special=special) == \
                oracle.tokenize(text, add_bos=add_bos, special=special), text
