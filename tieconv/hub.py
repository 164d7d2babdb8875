"""Hugging Face Hub repositories as inputs, resolved with huggingface_hub.

huggingface_hub does the Hub's part: endpoint (`HF_ENDPOINT`), token (`HF_TOKEN`), the cache
(`HF_HOME`), offline mode (`HF_HUB_OFFLINE`), downloads of small files and snapshots.  Safetensors
headers and tensor byte ranges are read here through its HTTP session, streamed: its own header
parser reads a fixed 100 kB (the whole file from servers that ignore ranges), validates loosely and
cannot tell how many bytes it used; we read exactly the bytes we need, count them, validate the
header strictly, and compare two tensors chunk by chunk as they arrive.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .checkpoint import (
    BIN_INDEX, BIN_SINGLE, CHUNK_BYTES, SAFETENSORS_INDEX, SAFETENSORS_SINGLE, Checkpoint,
)
from .errors import CorruptFileError, InputError
from .safetensors_header import MAX_HEADER_BYTES, parse_header

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[\w.\-/]+))?$")
# what a conversion downloads: weights of one format and the small files beside them
SMALL_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.md", "*.py.txt", "tokenizer*", "*.jinja"]


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    m = REPO_ID.match(str(text))
    return (m.group("repo"), m.group("rev")) if m else None


def is_repo_id(text) -> bool:
    return not Path(text).exists() and parse_repo_id(str(text)) is not None


@dataclass
class DownloadCounter:
    bytes: int = 0


@dataclass
class RemoteFiles:
    """Byte ranges of a repo's files over HTTP, through huggingface_hub's session, counted."""

    repo: str
    revision: str
    counter: DownloadCounter = field(default_factory=DownloadCounter)

    def _stream(self, filename: str, start: int, length: int, chunk: int) -> Iterator[bytes]:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session

        url = hf_hub_url(self.repo, filename, revision=self.revision)
        headers = build_hf_headers(headers={"Range": f"bytes={start}-{start + length - 1}"})
        with get_session().stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code == 404:
                raise FileNotFoundError(filename)
            if response.status_code not in (200, 206):
                raise InputError(f"{self.repo}: {filename}: the Hub answered {response.status_code}")
            skip = start if response.status_code == 200 else 0  # the server ignored the range
            remaining = length
            for data in response.iter_bytes(chunk):
                self.counter.bytes += len(data)
                if skip:
                    if len(data) <= skip:
                        skip -= len(data)
                        continue
                    data, skip = data[skip:], 0
                if len(data) >= remaining:
                    yield data[:remaining]
                    return
                remaining -= len(data)
                yield data
            if remaining:
                raise CorruptFileError(f"{self.repo}: {filename}: the file ended {remaining} bytes early")

    def read(self, filename: str, start: int, length: int) -> bytes:
        return b"".join(self._stream(filename, start, length, max(length, 1)))

    def iter_range(self, filename: str, start: int, length: int, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield exactly `length` bytes from `start`, in chunks of `chunk` bytes."""
        pending = b""
        for data in self._stream(filename, start, length, chunk):
            pending += data
            while len(pending) >= chunk:
                yield pending[:chunk]
                pending = pending[chunk:]
        if pending:
            yield pending

    def header(self, filename: str):
        """Strictly validated safetensors header of `filename`, reading its first 8 + N bytes only."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        size = get_hf_file_metadata(hf_hub_url(self.repo, filename, revision=self.revision)).size
        prefix = self.read(filename, 0, 8)
        length = int.from_bytes(prefix, "little")
        where = f"{self.repo}/{filename}"
        if length > MAX_HEADER_BYTES:
            raise CorruptFileError(f"{where}: header claims {length} bytes, over the {MAX_HEADER_BYTES}-byte cap")
        if size is not None and 8 + length > size:
            raise CorruptFileError(f"{where}: truncated: header claims {length} bytes")
        raw = self.read(filename, 8, length)
        return parse_header(raw, size if size is not None else 8 + length, where)


def _hub_error(repo: str, exc: Exception) -> InputError:
    name = type(exc).__name__
    if "RepositoryNotFound" in name:
        return InputError(f"{repo}: no such repository on the Hub (or it is private: set HF_TOKEN)")
    if "RevisionNotFound" in name:
        return InputError(f"{repo}: no such revision on the Hub")
    if "Offline" in name or "LocalEntryNotFound" in name:
        return InputError(f"{repo}: not in the local Hugging Face cache, and the Hub cannot be reached "
                          "(HF_HUB_OFFLINE or no network); download it first")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else name
    return InputError(f"{repo}: cannot read from the Hub ({first})")


def _cached(repo: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _small(repo: str, filename: str, revision: str | None, counter: DownloadCounter) -> Path:
    """A small file the repo lists, through the cache (downloaded if missing)."""
    from huggingface_hub import hf_hub_download

    cached = _cached(repo, filename, revision)
    if cached is not None:
        return cached
    path = Path(hf_hub_download(repo, filename, revision=revision))
    counter.bytes += path.stat().st_size
    return path


def _list_files(repo: str, revision: str | None) -> list[str] | None:
    """The repo's files, or None when the Hub cannot be asked (offline): then only the cache counts."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().list_repo_files(repo, revision=revision)
    except Exception as exc:  # noqa: BLE001
        name = type(exc).__name__
        if "NotFound" in name or "Gated" in name or "Disabled" in name:
            raise _hub_error(repo, exc) from None
        return None  # no network: fall back to the cache


def open_repo(text: str) -> tuple[Checkpoint, DownloadCounter]:
    """A `Checkpoint` for the Hub repo `org/name[@revision]`, reading headers only where it can."""
    from .checkpoint import open_checkpoint, read_json

    repo, revision = parse_repo_id(text)
    counter = DownloadCounter()
    try:
        files = _list_files(repo, revision)
        if files is None:
            ckpt = _from_cache(repo, revision)
        else:
            config_path = _small(repo, "config.json", revision, counter) if "config.json" in files else None
            weights = _safetensors_files(repo, revision, files, counter)
            if weights and all(_cached(repo, w, revision) for w in weights):
                ckpt = open_checkpoint(_cached(repo, weights[0], revision).parent)
                ckpt.notes.append(f"Hub repo {repo}: read from the local Hugging Face cache")
            elif weights:
                ckpt = _remote_checkpoint(repo, revision or "main", weights, config_path, read_json, counter)
            else:
                ckpt = open_checkpoint(download(repo, revision, counter))
                ckpt.notes.append(f"Hub repo {repo}: no safetensors, weights downloaded into the cache")
    except (InputError, CorruptFileError):
        raise
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's and httpx's errors, turned into one line
        raise _hub_error(repo, exc) from None
    ckpt.path = Path(text)
    ckpt.layout = "hub"
    return ckpt, counter


def _from_cache(repo: str, revision: str | None) -> Checkpoint:
    from .checkpoint import open_checkpoint

    for name in ("config.json", SAFETENSORS_INDEX, SAFETENSORS_SINGLE, BIN_INDEX, BIN_SINGLE):
        found = _cached(repo, name, revision)
        if found is not None:
            ckpt = open_checkpoint(found.parent)
            ckpt.notes.append(f"Hub repo {repo}: offline, read from the local Hugging Face cache")
            return ckpt
    raise InputError(f"{repo}: not in the local Hugging Face cache, and the Hub cannot be reached "
                     "(HF_HUB_OFFLINE or no network); download it first")


def _safetensors_files(repo, revision, files: list[str], counter) -> list[str] | None:
    if SAFETENSORS_INDEX in files:
        from .checkpoint import _read_index

        index_path = _small(repo, SAFETENSORS_INDEX, revision, counter)
        return list(_read_index(index_path.parent, index_path.name))
    if SAFETENSORS_SINGLE in files:
        return [SAFETENSORS_SINGLE]
    singles = [f for f in files if f.endswith(".safetensors") and "/" not in f]
    return singles if len(singles) == 1 else None


def _remote_checkpoint(repo, revision, weights, config_path, read_json, counter) -> Checkpoint:
    remote = RemoteFiles(repo, revision, counter)
    config = read_json(config_path, "config") if config_path else None
    ckpt = Checkpoint(Path(repo), Path(repo), "hub", [], {}, config, "config.json" if config else None)
    ckpt._remote = remote
    for name in weights:
        ckpt.add_safetensors_header(name, remote.header(name), f"{repo}/{name}")
    ckpt.notes.append(f"Hub repo {repo}@{revision}: safetensors headers read over HTTP; tensor bytes are fetched "
                      "only for the comparison")
    return ckpt


def local_path(src):
    """`src` itself, or for a Hub repo id the cache snapshot holding what a conversion or a load needs."""
    if not is_repo_id(src):
        return src
    repo, revision = parse_repo_id(str(src))
    return download(repo, revision)


def download(repo: str, revision: str | None, counter: DownloadCounter | None = None) -> Path:
    """Download what a conversion needs into the cache: one weight format and the small files."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(repo, revision=revision)
    except Exception:  # noqa: BLE001 - offline: take what the cache has
        files = []
    if any(f.endswith(".safetensors") for f in files) or not files:
        weights = ["*.safetensors"]
    elif any(f.endswith(".bin") for f in files):
        weights = [BIN_SINGLE, "pytorch_model*.bin", BIN_INDEX]
    else:
        weights = ["*.gguf", "*.pth", "*.pt"]
    blobs = _blobs_folder(repo)
    before = set(os.listdir(blobs)) if blobs.is_dir() else set()
    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=weights + SMALL_FILES))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors, turned into one line
        raise _hub_error(repo, exc) from None
    if counter is not None and blobs.is_dir():
        counter.bytes += sum((blobs / b).stat().st_size for b in set(os.listdir(blobs)) - before)
    return path


def _blobs_folder(repo: str) -> Path:
    """The cache's blobs/ folder of `repo` (huggingface_hub's cache layout)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "blobs"
