"""-hf / -hff / -mu downloads through huggingface_hub, against a local stand-in of the hub (no network)."""

import subprocess
import sys

import pytest

from hub_server import FakeHub
from llamacpy import hub
from llamacpy.gguf_file import GGUFFile
from shared import models_dir
from split_util import split_gguf


@pytest.fixture
def repo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("repo")
    parts = split_gguf(models_dir() / "stories260K.gguf", d / "stories260K-F32", 3)
    return {
        "ggml-org/stories": {
            "README.md": b"# stories\n",
            "stories260K-Q8_0.gguf": (models_dir() / "stories260K-Q8_0.gguf").read_bytes(),
            "stories260K-Q4_0.gguf": (models_dir() / "stories260K-Q4_0.gguf").read_bytes(),
            "mmproj-stories-Q4_0.gguf": b"not a model",
            **{p.name: p.read_bytes() for p in parts},
        },
        "ggml-org/plain": {"model.gguf": (models_dir() / "stories260K.gguf").read_bytes()},
    }


@pytest.fixture
def fake(repo_files, tmp_path, monkeypatch):
    with FakeHub(repo_files) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield srv


def test_pick_rule_follows_llamacpp():
    files = ["a/m-Q8_0.gguf", "m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf", "mmproj-Q4_K_M.gguf"]
    assert hub.pick_gguf(files, "") == "m-Q4_K_M-00001-of-00002.gguf"  # Q4_K_M first, split part 1
    assert hub.pick_gguf(files, "q8_0") == "a/m-Q8_0.gguf"  # case-insensitive
    assert hub.pick_gguf(files, "Q5_K_M") is None
    assert hub.pick_gguf(["x-F16.gguf", "y-Q8_0.gguf"], "") == "y-Q8_0.gguf"  # then Q8_0
    assert hub.pick_gguf(["x-F16.gguf", "z.gguf"], "") == "x-F16.gguf"  # then the first model
    assert hub.split_parts("d/m-00001-of-00003.gguf") == [f"d/m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    with pytest.raises(hub.HubError, match="expected USER/MODEL"):
        hub.parse_repo("just-a-name")


def test_plain_file_and_cache(fake, tmp_path):
    path = hub.hf_model("ggml-org/plain", "model.gguf")
    assert path.startswith(str(tmp_path / "hf" / "hub"))
    assert open(path, "rb").read() == (models_dir() / "stories260K.gguf").read_bytes()
    n = len(fake.requests)
    assert hub.hf_model("ggml-org/plain", "model.gguf") == path  # cached: a HEAD only, no body again
    assert all(m == "HEAD" for m, _, _ in fake.requests[n:])


def test_token_is_sent(fake):
    hub.hf_model("ggml-org/plain", "model.gguf", token="hf_test_token")
    assert fake.auth and all(a == "Bearer hf_test_token" for a in fake.auth)


def test_quant_tag_picks_that_file(fake):
    path = hub.hf_model("ggml-org/stories:Q4_0")
    assert path.endswith("stories260K-Q4_0.gguf") and "mmproj" not in path
    assert any(p.startswith("/api/models/ggml-org/stories/tree/") for _, p, _ in fake.requests)
    with pytest.raises(hub.HubError, match=r"no GGUF of type Q5_K_M .*stories260K-Q8_0.gguf"):
        hub.hf_model("ggml-org/stories:Q5_K_M")


def test_split_model_all_parts_fetched_and_loaded(fake):
    first = hub.hf_model("ggml-org/stories:F32")
    assert first.endswith("stories260K-F32-00001-of-00003.gguf")
    got = {p for m, p, _ in fake.requests if m == "GET" and "/resolve/" in p}
    assert {f"/ggml-org/stories/resolve/main/stories260K-F32-0000{i}-of-00003.gguf" for i in (1, 2, 3)} <= got
    f = GGUFFile(first)
    assert len(f.parts) == 3 and len(f.tensors) == 48


def test_404_is_one_clear_line(fake):
    with pytest.raises(hub.HubError, match=r"no file 'missing.gguf' in the repository \(HTTP 404"):
        hub.hf_model("ggml-org/plain", "missing.gguf")
    with pytest.raises(hub.HubError, match="no such repository"):
        hub.hf_model("nobody/nothing")
    with pytest.raises(hub.HubError, match=r"-mu .*HTTP 404"):
        hub.url_model(fake.url + "/plain/missing.gguf")


def test_dropped_connection_is_resumed(fake, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and resumes after the
    # last complete one; with 64 KiB chunks our 1.2 MB file is cut after several of them, as a big model would be
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    fake.drop_once.add("model.gguf")
    path = hub.hf_model("ggml-org/plain", "model.gguf")
    assert open(path, "rb").read() == (models_dir() / "stories260K.gguf").read_bytes()
    gets = [r for m, p, r in fake.requests if m == "GET" and p.endswith("/model.gguf")]
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=")  # the second asks for the rest
    assert int(gets[1][6:-1]) > 0
    fake.drop_once.add("model.gguf")
    p = hub.url_model(fake.url + "/plain/model.gguf")
    assert open(p, "rb").read() == (models_dir() / "stories260K.gguf").read_bytes()


def test_offline_mode_uses_the_cache(fake, monkeypatch):
    online = hub.hf_model("ggml-org/stories:Q8_0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(fake.requests)
    assert hub.hf_model("ggml-org/stories:Q8_0") == online
    assert hub.hf_model("ggml-org/stories", "stories260K-Q8_0.gguf") == online
    assert len(fake.requests) == n  # not one request
    with pytest.raises(hub.HubError, match=r"no GGUF of type Q4_0 in the cache \(HF_HUB_OFFLINE is set\)"):
        hub.hf_model("ggml-org/stories:Q4_0")
    with pytest.raises(hub.HubError, match=r"stories260K-Q4_0.gguf is not in the local cache .* HF_HUB_OFFLINE"):
        hub.hf_model("ggml-org/stories", "stories260K-Q4_0.gguf")


def test_cli_run_with_hf_flag(fake, tmp_path):
    import os

    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-hf", "ggml-org/plain", "-hff", "model.gguf",
                          "-p", "Once upon a time", "-n", "8", "--temp", "0"], capture_output=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().startswith(" Once upon a time, there was")
    out = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-hf", "ggml-org/plain:Q2_K", "-p", "x"],
                         capture_output=True, timeout=300, env=env)
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and "Traceback" not in err and err.startswith("error: -hf ggml-org/plain:Q2_K")


def test_serve_passes_the_download_to_each_ray_replica(fake, tmp_path, monkeypatch):
    """`serve -hf`: the config keeps the -hf flags, and a replica on another node (another HF cache) resolves
    them to its own local copy -- no shared disk needed."""
    from llamacpy import cli_serve
    from llamacpy.ray.replica import on_this_node

    cfg = cli_serve.config_from_args(cli_serve.build_parser().parse_args(["-hf", "ggml-org/stories:Q4_0"]))
    assert cfg.model.endswith("stories260K-Q4_0.gguf") and cfg.model.startswith(str(tmp_path / "hf"))
    assert cfg.model_source["hf_repo"] == "ggml-org/stories:Q4_0"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-node"))
    node_cfg = on_this_node(cfg)
    assert node_cfg.model.startswith(str(tmp_path / "other-node"))
    assert open(node_cfg.model, "rb").read() == open(cfg.model, "rb").read()
    plain = cli_serve.config_from_args(cli_serve.build_parser().parse_args(["-m", str(models_dir() / "stories260K.gguf")]))
    assert plain.model_source is None and on_this_node(plain) is plain
