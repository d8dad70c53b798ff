"""Byte-level BPE tokenizer (tokenizer.ggml.model "gpt2", Llama 3) against llama.cpp's golden outputs.

The golden detok strings come from llama-cpp-python's `Llama.detokenize(ids, special=special)` (pieces joined, one
leading space dropped after a leading BOS): `detokenize_like_llama_cpp_python` reproduces them. `Tokenizer.detokenize`
is llama_detokenize, which for this vocab also applies llama.cpp's clean_spaces pass.
Every expected id list comes from the golden files; behaviours they do not cover (special-token parsing, invalid
UTF-8, letters newer than llama.cpp's Unicode tables) are checked as relations between tokenizations, and exactly
against llama.cpp in `test_cases_without_golden_ids_match_llama_cpp_python` (the `oracle` extra, run by `-m slow`).
"""

from __future__ import annotations

import codecs
import json
import random
import hashlib
import warnings

import pytest
from shared import golden_dir

from llamacpy.errors import TokenizerError
from llamacpy.gguf_file import GGUFFile
from llamacpy.tokenizer import BPETokenizer, detokenize_like_llama_cpp_python, load_tokenizer
from llamacpy.tokenizer.bpe import BYTE_TO_CHAR, byte_decode, byte_encode
from llamacpy.tokenizer.pretokenizers import GPT2, LLAMA3, split_words

SEPARATOR = b"\n__ggml_vocab_test__\n"
BEGIN_OF_TEXT, END_OF_TEXT, EOT_ID = 128000, 128001, 128009


def bpe_vocab_path():
    return golden_dir() / "tokenizer" / "ggml-vocab-llama-bpe.gguf"


@pytest.fixture(scope="module")
def bpe_metadata():
    return GGUFFile(str(bpe_vocab_path())).metadata


@pytest.fixture(scope="module")
def bpe(bpe_metadata):
    return load_tokenizer(bpe_metadata, "ggml-vocab-llama-bpe.gguf")


def read_vocab_test_cases(vocab_path):
    texts = vocab_path.with_name(vocab_path.name + ".inp").read_bytes().split(SEPARATOR)[:-1]
    lines = vocab_path.with_name(vocab_path.name + ".out").read_text().split("\n")
    assert len(lines) >= len(texts)
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines)]


# -- golden data --------------------------------------------------------------------------------------------
def test_loads_as_llama3_bpe(bpe):
    assert isinstance(bpe, BPETokenizer)
    assert bpe.n_vocab == 128256 and bpe.n_merges == 280147
    assert (bpe.bos_id, bpe.eos_id) == (BEGIN_OF_TEXT, END_OF_TEXT)
    assert bpe.add_bos and not bpe.add_eos  # no add_bos_token key: llama.cpp's default for "llama-bpe"
    assert bpe.pre is LLAMA3


def test_llama_cpp_vocab_test_vectors(bpe):
    cases = read_vocab_test_cases(bpe_vocab_path())
    assert len(cases) == 46
    failures = [(text, expected, bpe.tokenize(text, add_bos=False, special=False)) for text, expected in cases
                if bpe.tokenize(text, add_bos=False, special=False) != expected]
    assert failures == []


def test_golden_cases_ids_and_detok(bpe):
    cases = json.loads((golden_dir() / "tokenizer" / "llama-bpe-cases.json").read_text())["cases"]
    assert len(cases) >= 60
    for case in cases:
        ids = bpe.tokenize(case["text"].encode("utf-8"), add_bos=case["add_bos"], special=case["special"])
        assert ids == case["ids"], case
        detok = detokenize_like_llama_cpp_python(bpe, case["ids"], special=case["special"])
        assert detok.decode("utf-8") == case["detok"], case


# -- end of generation -----------------------------------------------------------------------------------------
def test_eog_ids_include_eot_and_end_of_text(bpe):
    assert bpe.token_text(EOT_ID) == "<|eot_id|>" and bpe.token_text(END_OF_TEXT) == "<|end_of_text|>"
    assert {EOT_ID, END_OF_TEXT} <= bpe.eog_ids
    assert bpe.is_eog(bpe.eos_id) and bpe.is_eog(EOT_ID)
    assert not bpe.is_eog(BEGIN_OF_TEXT) and not bpe.is_eog(9906)
    assert bpe.eot_id == EOT_ID and bpe.eom_id is None


def test_eot_and_eom_from_metadata(bpe_metadata):
    tok = load_tokenizer(dict(bpe_metadata, **{"tokenizer.ggml.eot_token_id": 128008,
                                               "tokenizer.ggml.eom_token_id": 128007}))
    assert (tok.eot_id, tok.eom_id) == (128008, 128007)
    assert {128007, 128008, EOT_ID, END_OF_TEXT} <= tok.eog_ids  # <|eot_id|> stays EOG by its text


# -- special tokens ------------------------------------------------------------------------------------------------
def test_special_tokens_parsed_only_when_asked(bpe):
    text = b"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    special = {name: bpe.texts.index(name) for name in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    plain = lambda t: bpe.tokenize(t, add_bos=False, special=False)  # noqa: E731
    # the special tokens' own ids (golden: <|eot_id|> is 128009), the text between them tokenized as plain text
    assert special["<|eot_id|>"] == EOT_ID
    assert bpe.tokenize(text, add_bos=True, special=True) == [BEGIN_OF_TEXT, special["<|start_header_id|>"],
                                                              *plain(b"user"), special["<|end_header_id|>"],
                                                              *plain(b"\n\nHi"), EOT_ID]
    ids = plain(text)
    assert not set(ids) & (set(special.values()) | bpe.eog_ids | {BEGIN_OF_TEXT})
    assert b"".join(bpe.token_to_piece(i, special=False) for i in ids) == text


def test_control_pieces_and_llama_detokenize(bpe):
    ids = bpe.tokenize(b"Hi<|eot_id|>", add_bos=True, special=True)
    assert bpe.token_to_piece(EOT_ID, special=False) == b""
    assert bpe.token_to_piece(EOT_ID, special=True) == b"<|eot_id|>"
    assert bpe.detokenize(ids) == b"Hi"
    assert bpe.detokenize(ids, unparse_special=True) == b"<|begin_of_text|>Hi<|eot_id|>"
    assert bpe.detokenize(ids, remove_special=True, unparse_special=True) == b"Hi<|eot_id|>"


def test_llama_detokenize_cleans_spaces_like_llama_cpp(bpe):
    ids = bpe.tokenize(b"Hello , world . It 's", add_bos=False)
    assert bpe.detokenize(ids) == b"Hello, world. It's"  # llama.cpp's clean_spaces for this pre-tokenizer
    assert detokenize_like_llama_cpp_python(bpe, ids) == b"Hello , world . It 's"


# -- bytes and streaming -----------------------------------------------------------------------------------------
def test_byte_level_encoding_round_trips():
    assert len(set(BYTE_TO_CHAR)) == 256
    assert byte_decode("".join(BYTE_TO_CHAR)) == bytes(range(256))
    assert byte_decode(byte_encode("héllo 🦙\n")) == "héllo 🦙\n".encode()
    assert byte_encode(" ") == "Ġ" and byte_encode("\n") == "Ċ"


@pytest.mark.parametrize("text", ["emoji 🦙🔥 end", "日本語のテキスト", "𝄞𝄢 ✓ naïve"])
def test_streaming_pieces_rebuild_multibyte_text(bpe, text):
    ids = bpe.tokenize(text.encode("utf-8"), add_bos=True)
    pieces = [bpe.token_to_piece(i, special=False) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    decoder = codecs.getincrementaldecoder("utf-8")()
    assert "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True) == text


def test_emoji_is_split_over_several_tokens(bpe):
    ids = bpe.tokenize("🦙".encode(), add_bos=False)
    pieces = [bpe.token_to_piece(i) for i in ids]
    assert len(ids) > 1 and b"".join(pieces) == "🦙".encode()
    with pytest.raises(UnicodeDecodeError):
        pieces[0].decode("utf-8")  # a partial character: callers must decode incrementally


def test_invalid_utf8_becomes_one_replacement_character_per_byte(bpe):
    # llama.cpp decodes each invalid byte as U+FFFD (the exact ids are checked by the oracle test)
    plain = lambda t: bpe.tokenize(t, add_bos=False)  # noqa: E731
    assert plain(b"\xe3\x89a") == plain("\ufffd\ufffda".encode())
    assert plain(b"\xff") == plain("\ufffd".encode())


# llama.cpp's src/unicode-data.cpp (as vendored in llama-cpp-python 0.3.36, Unicode 15.1): the code points flagged
# LETTER (0x0004) and NUMBER (0x0002), as a count and the sha256 of their comma-joined decimal values (first 16 hex)
LLAMA_CPP_LETTERS = (136726, "eefe90792c030696")
LLAMA_CPP_NUMBERS = (1831, "1b305d2da207f8de")


def _class_digest(cls):
    import regex

    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    found = ",".join(str(ord(ch)) for ch in regex.findall(cls, every, flags=regex.V1))
    return found.count(",") + 1, hashlib.sha256(found.encode()).hexdigest()[:16]


def test_letter_and_number_tables_equal_llama_cpp():
    """\\p{L} / \\p{N} as narrowed for llama.cpp, over all of Unicode, equal llama.cpp's tables -- whatever Unicode
    version the installed `regex` knows (a newer one adds letters that must join the exclusion lists)."""
    from llamacpy.tokenizer.pretokenizers import LETTER_CLASS, NUMBER_CLASS

    assert _class_digest(LETTER_CLASS) == LLAMA_CPP_LETTERS
    assert _class_digest(NUMBER_CLASS) == LLAMA_CPP_NUMBERS


def test_letters_newer_than_llama_cpp_unicode_tables():
    # U+13C68 (Unicode 16) is unassigned for llama.cpp, so it groups with punctuation, not with the letter V
    assert split_words("-\U00013C68V", LLAMA3.compiled()) == ["-\U00013C68", "V"]
    assert split_words("x\u088fy", LLAMA3.compiled()) == ["x", "\u088fy"]  # U+088F: a non-letter prefix
    assert split_words("x\u0889y", LLAMA3.compiled()) == ["x\u0889y"]  # U+0889 (Unicode 14) is a letter there


# -- pre-tokenizers ------------------------------------------------------------------------------------------------
def test_llama3_and_gpt2_word_splits():
    text = "Hello world's 1234567 \n\n  x  "
    assert split_words(text, LLAMA3.compiled()) == ["Hello", " world", "'s", " ", "123", "456", "7", " \n\n", " ",
                                                      " x", "  "]
    assert split_words(text, GPT2.compiled()) == ["Hello", " world", "'s", " 1234567", " \n\n ", " x", "  "]


def test_unknown_pre_tokenizer_warns_and_falls_back(bpe_metadata):
    with pytest.warns(UserWarning, match="'my-new-pre'"):
        tok = load_tokenizer(dict(bpe_metadata, **{"tokenizer.ggml.pre": "my-new-pre"}), "x.gguf")
    assert tok.pre.name == "default"
    assert tok.tokenize(b"Hello world", add_bos=False) == [9906, 1917]


def test_gpt2_pre_tokenizer_selected_by_name(bpe_metadata):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = load_tokenizer(dict(bpe_metadata, **{"tokenizer.ggml.pre": "gpt-2"}))
    assert tok.pre is GPT2 and not tok.add_bos  # add_bos default is false outside the Llama 3 family
    assert tok.tokenize(b"Hello world", add_bos=True) == [9906, 1917]


# -- size ----------------------------------------------------------------------------------------------------------
def test_tokenizing_100_kb_round_trips(bpe_metadata):
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "naïve", "日本", "🦙", "12345", "...", "\n", "  ", "tokenizer",
             "Über"]
    text = " ".join(rng.choice(words) + rng.choice(["", "s", "ed", "ing", "!"]) for _ in range(20000)).encode()
    text = text[:100 * 1024].decode("utf-8", errors="ignore").encode("utf-8")
    fresh = load_tokenizer(bpe_metadata)  # empty word cache
    ids = fresh.tokenize(text, add_bos=False)
    assert b"".join(fresh.token_to_piece(i, special=False) for i in ids) == text


# -- bad input -------------------------------------------------------------------------------------------------------
def test_missing_merges(bpe_metadata):
    metadata = {k: v for k, v in bpe_metadata.items() if k != "tokenizer.ggml.merges"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.merges"):
        load_tokenizer(metadata, "nomerges.gguf")


def test_missing_tokens(bpe_metadata):
    metadata = {k: v for k, v in bpe_metadata.items() if k != "tokenizer.ggml.tokens"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        load_tokenizer(metadata, "notokens.gguf")


def test_unknown_model(bpe_metadata):
    with pytest.raises(TokenizerError, match="'rwkv'"):
        load_tokenizer(dict(bpe_metadata, **{"tokenizer.ggml.model": "rwkv"}))


# -- cross-checks against llama.cpp itself (the `oracle` extra: pip install -e '.[oracle]'; run by -m slow) -----------
NO_GOLDEN_IDS = [(b"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", True, True),
                 (b"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", False, False),
                 (b"Hello , world . It 's", False, False), (b"\xe3\x89a", False, False), (b"\xc0\x80!", False, False),
                 ("-\U00013C68V".encode(), False, False), ("x\u088fy".encode(), False, False)]


def _oracle():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (the `oracle` extra)")
    return llama_cpp.Llama(str(bpe_vocab_path()), vocab_only=True, verbose=False)


@pytest.mark.slow
def test_cases_without_golden_ids_match_llama_cpp_python(bpe):
    oracle = _oracle()
    for text, add_bos, special in NO_GOLDEN_IDS:
        assert bpe.tokenize(text, add_bos=add_bos, special=special) == \
            oracle.tokenize(text, add_bos=add_bos, special=special), text


@pytest.mark.slow
def test_random_text_matches_llama_cpp_python(bpe):
    oracle = _oracle()
    alphabet = list("abcXYZ  \t\n\r'sSdtmlLvVeE.,!?-_0123456789") + [
        "é", "ß", "日", "🦙", "\u0301", "\u00a0", "\u3000", "ſ", "Ⅻ", "½", "١", "<|eot_id|>",
        "<|begin_of_text|>"]
    rng = random.Random(4321)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))).encode()
        for add_bos, special in ((False, False), (True, True)):
            assert bpe.tokenize(text, add_bos=add_bos, special=special) == \
                oracle.tokenize(text, add_bos=add_bos, special=special), text
