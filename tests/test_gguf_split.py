"""Split GGUFs (gguf-split's layout) load from their first part, for every command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from llamacpy.errors import GGUFError
from llamacpy.gguf_file import GGUFFile
from shared import golden_dir, models_dir
from split_util import split_gguf


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    return split_gguf(models_dir() / "stories260K.gguf", d / "stories260K", 3)


def test_first_part_opens_whole_model(parts):
    whole, ref = GGUFFile(parts[0]), GGUFFile(models_dir() / "stories260K.gguf")
    assert len(whole.parts) == 3 and list(whole.tensors) == list(ref.tensors)
    for name, t in ref.tensors.items():
        assert (whole.tensors[name].shape, whole.tensors[name].ggml_type) == (t.shape, t.ggml_type)
        assert np.array_equal(whole.tensor(name), ref.tensor(name)), name
    assert {whole.tensors[n].part for n in whole.tensors} == {0, 1, 2}
    assert whole.metadata["general.architecture"] == "llama"


def test_run_from_first_part_gives_golden_text(parts):
    case = json.loads((golden_dir() / "greedy.json").read_text())["cases"][0]
    out = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-m", str(parts[0]), "-p", case["prompt"],
                          "-n", "48", "--temp", "0"], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode() == " " + case["prompt"] + case["text"] + "\n"


def test_perplexity_and_bench_take_split_models(parts, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text((golden_dir() / "perplexity" / "tinystories.txt").read_text()[:3000])
    out = subprocess.run([sys.executable, "-m", "llamacpy", "perplexity", "-m", str(parts[0]), "-f", str(text),
                          "-c", "128", "--chunks", "2"], capture_output=True, timeout=300)
    assert out.returncode == 0 and b"Final estimate" in out.stdout, out.stderr.decode()
    out = subprocess.run([sys.executable, "-m", "llamacpy", "bench", "-m", str(parts[0]), "-p", "4", "-n", "2",
                          "-r", "1"], capture_output=True, timeout=300)
    assert out.returncode == 0 and b"tg2" in out.stdout, out.stderr.decode()


def test_later_part_or_missing_part_is_a_clear_error(parts, tmp_path):
    with pytest.raises(GGUFError, match=r"part 2 of 3 .*open .*-00001-of-00003\.gguf"):
        GGUFFile(parts[1])
    lone = tmp_path / "m-00001-of-00003.gguf"
    lone.write_bytes(parts[0].read_bytes())
    with pytest.raises(GGUFError, match=r"split part 2 of 3 is missing"):
        GGUFFile(lone)
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(parts[0].read_bytes())
    with pytest.raises(GGUFError, match="file name does not end in -00001-of-00003.gguf"):
        GGUFFile(renamed)


def test_tensor_count_mismatch_and_duplicates_are_refused(tmp_path):
    parts = split_gguf(models_dir() / "stories260K.gguf", tmp_path / "m", 2, tensors_count=47)
    with pytest.raises(GGUFError, match=r"split.tensors.count=47 but the 2 parts hold 48 tensors"):
        GGUFFile(parts[0])
    parts = split_gguf(models_dir() / "stories260K.gguf", tmp_path / "d", 2)
    parts[1].write_bytes(split_gguf(models_dir() / "stories260K.gguf", tmp_path / "e", 1)[0].read_bytes())
    with pytest.raises(GGUFError):  # a whole model where part 2 should be: split.no/count do not match
        GGUFFile(parts[0])
