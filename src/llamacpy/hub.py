"""Model downloads: `-hf USER/REPO[:QUANT]` (+ `-hff FILE`, `-hft TOKEN`) from the Hugging Face Hub and `-mu URL`.

Owns: picking the GGUF a `:QUANT` tag names in a repository's file list (llama.cpp's rule: the first model
file whose name holds `QUANT` followed by `.` or `-`, case-insensitive; without a tag Q4_K_M, then Q8_0, then
the first GGUF; mmproj files are never models), fetching every part of a split model, and turning the hub's
failures into one-line `HubError`s. The transfer itself, the cache (HF_HOME / HF_HUB_CACHE), resume and
the progress bar are huggingface_hub's. HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE are read at
call time (not at import), so they can change within one process. `-mu` files go to LLAMA_CACHE (default
~/.cache/llamacpy) under the URL's last path component, as llama.cpp names them; a file already there is used
as is.
Must not: open or check the GGUF (GGUFFile does that when the command loads it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .errors import LlamacpyError

SPLIT_RE = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's preference when -hf has no :QUANT


class HubError(LlamacpyError):
    """A download failed: no such repository or file, no network, nothing cached in offline mode."""


# -- settings, read when called ---------------------------------------------------------------------------------
def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return v.strip().upper() in ("1", "ON", "YES", "TRUE")


def llama_cache_dir() -> str:
    return os.environ.get("LLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llamacpy")


# -- picking files ----------------------------------------------------------------------------------------------
def parse_repo(spec: str) -> tuple[str, str]:
    """'user/model[:quant]' -> ('user/model', 'quant' or '')."""
    repo, _, tag = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")) or any(c.isspace() for c in spec):
        raise HubError(f"-hf {spec!r}: expected USER/MODEL[:QUANT], e.g. ggml-org/models:Q4_K_M")
    return repo, tag


def _is_model_gguf(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and "mmproj" not in base


def _first_part(name: str) -> bool:
    m = SPLIT_RE.match(name.rsplit("/", 1)[-1])
    return m is None or int(m.group(2)) == 1


def pick_gguf(files: list[str], tag: str) -> str | None:
    """The repository file a tag selects (see the module docstring), or None."""
    models = [f for f in files if _is_model_gguf(f) and _first_part(f)]
    for t in ([tag] if tag else list(DEFAULT_TAGS)):
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        for f in models:
            if pattern.search(f):
                return f
    if not tag and models:
        return models[0]
    return None


def split_parts(name: str) -> list[str]:
    """All parts of a split model given its first part's name (just [name] when not split)."""
    head, _, base = name.rpartition("/")
    m = SPLIT_RE.match(base)
    if m is None:
        return [name]
    n = int(m.group(3))
    if not 1 <= n <= 9999:
        raise HubError(f"{name}: a split model of {n} parts?")
    prefix = (head + "/" if head else "") + m.group(1)
    return [f"{prefix}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


# -- Hugging Face ----------------------------------------------------------------------------------------------
def _progress_default() -> None:
    """A progress bar on a terminal only (huggingface_hub draws one to stderr by default)."""
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return
    (enable_progress_bars if sys.stderr.isatty() else disable_progress_bars)()


def _cached_files(repo: str, revision: str = "main") -> list[str]:
    """Files of repo@revision in the local hub cache (models--USER--NAME/snapshots/COMMIT/...)."""
    root = Path(cache_dir()) / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = root / "snapshots" / commit
    if not snap.is_dir():
        return []
    return sorted(str(p.relative_to(snap)).replace(os.sep, "/") for p in snap.rglob("*") if p.is_file())


def _hub_error(e: Exception, repo: str, what: str) -> HubError:
    from huggingface_hub import errors as E

    ep = endpoint()
    if isinstance(e, E.GatedRepoError):
        return HubError(f"-hf {repo}: the repository is gated on {ep}; accept its terms and pass -hft TOKEN")
    if isinstance(e, E.RepositoryNotFoundError):
        return HubError(f"-hf {repo}: no such repository on {ep} (or it is private: pass -hft TOKEN)")
    if isinstance(e, E.RevisionNotFoundError):
        return HubError(f"-hf {repo}: revision not found on {ep}")
    if isinstance(e, E.RemoteEntryNotFoundError):
        return HubError(f"-hf {repo}: no file {what!r} in the repository (HTTP 404 from {ep})")
    if isinstance(e, (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled)):
        return HubError(f"-hf {repo}: {what} is not in the local cache {cache_dir()} and "
                        + ("HF_HUB_OFFLINE is set" if offline() else f"{ep} cannot be reached"))
    if isinstance(e, E.HfHubHTTPError):
        code = getattr(getattr(e, "response", None), "status_code", "?")
        return HubError(f"-hf {repo}: downloading {what} failed (HTTP {code} from {ep})")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return HubError(f"-hf {repo}: downloading {what} from {ep} failed: {msg}")


def _list_repo(repo: str, token: str | None) -> tuple[list[str], str]:
    """The repository's files and where the list came from: the hub, or the local cache when offline or
    the hub cannot be reached."""
    if offline():
        files = _cached_files(repo)
        if not files:
            raise HubError(f"-hf {repo}: HF_HUB_OFFLINE is set and the repository is not in the cache "
                           f"{cache_dir()}")
        return files, "the cache (HF_HUB_OFFLINE is set)"
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint(), token=token).list_repo_files(repo), "the repository"
    except Exception as e:  # noqa: BLE001 - mapped to one line below
        err = _hub_error(e, repo, "the file list")
        if "cannot be reached" in str(err) or "failed:" in str(err):
            cached = _cached_files(repo)
            if cached:
                return cached, f"the cache ({endpoint()} cannot be reached)"
        raise err from None


def hf_model(spec: str, hf_file: str | None = None, token: str | None = None) -> str:
    """Download (or find in the cache) the GGUF that -hf SPEC [-hff FILE] names; every part of a split
    model is fetched. Returns the local path of the (first) file."""
    repo, tag = parse_repo(spec)
    if hf_file:
        names = split_parts(hf_file)
    else:
        files, source = _list_repo(repo, token)
        chosen = pick_gguf(files, tag)
        if chosen is None:
            ggufs = [f for f in files if f.lower().endswith(".gguf")]
            want = f"of type {tag}" if tag else "at all"
            raise HubError(f"-hf {spec}: no GGUF {want} in {source}"
                           + (f" (it has: {', '.join(ggufs[:12])}{', ...' if len(ggufs) > 12 else ''})"
                              if ggufs else ""))
        names = split_parts(chosen)
    _progress_default()
    from huggingface_hub import hf_hub_download

    paths = []
    for name in names:
        try:
            paths.append(hf_hub_download(repo, name, endpoint=endpoint(), cache_dir=cache_dir(), token=token,
                                         local_files_only=offline()))
        except Exception as e:  # noqa: BLE001 - mapped to one line
            raise _hub_error(e, repo, name) from None
    return paths[0]


# -- plain URLs -------------------------------------------------------------------------------------------------
def url_model(url: str, token: str | None = None) -> str:
    """-mu URL: the file at URL (and the other parts when it names the first part of a split model),
    downloaded into LLAMA_CACHE; returns the local path of the first."""
    if not re.match(r"^https?://", url):
        raise HubError(f"-mu {url!r}: expected an http:// or https:// URL")
    base_url = url.split("?", 1)[0].split("#", 1)[0]
    name = base_url.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise HubError(f"-mu {url!r}: the URL names no file")
    parts = split_parts(name)
    prefix = base_url[: len(base_url) - len(name)]
    out = []
    for part in parts:
        out.append(_fetch_url(prefix + part if part != name else url, part, token))
    return out[0]


def _fetch_url(url: str, name: str, token: str | None) -> str:
    folder = Path(llama_cache_dir())
    dest = folder / name
    if dest.is_file():
        return str(dest)
    if offline():
        raise HubError(f"-mu {url}: not in the cache {folder} and HF_HUB_OFFLINE is set")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HubError(f"-mu {url}: cannot create the cache folder {folder} ({e.strerror})") from None
    _progress_default()
    from huggingface_hub import errors as E
    from huggingface_hub.file_download import http_get

    tmp = dest.with_name(dest.name + ".incomplete")  # kept on failure: the next run resumes it
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with open(tmp, "ab") as f:
            http_get(url, f, resume_size=f.tell(), headers=headers, displayed_filename=name)
    except E.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", "?")
        if code == 416:  # the partial file is complete or stale: start over next time
            tmp.unlink(missing_ok=True)
        raise HubError(f"-mu {url}: download failed (HTTP {code})") from None
    except OSError as e:
        raise HubError(f"-mu {url}: download failed ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - network errors of the HTTP client, one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubError(f"-mu {url}: download failed: {msg}") from None
    os.replace(tmp, dest)
    return str(dest)
