"""Hugging Face Hub repositories as inputs, resolved with huggingface_hub.

huggingface_hub does the Hub's part: the endpoint (`HF_ENDPOINT`), the token (`HF_TOKEN`), the cache
(`HF_HOME`, its layout and lookups), offline mode (`HF_HUB_OFFLINE`), repo-id validation, the repo's
file list and snapshot downloads.  What we add, and why:

- the decision local path vs repo id, made before any network call, so a typo of a local folder
  never waits on the network and a failure names both readings;
- one probe of the repo (`model_info`: one GET, no retries, a timeout) instead of the listing calls
  that retry for ~24 s on an unreachable host;
- safetensors headers and tensor byte ranges read through huggingface_hub's HTTP session, streamed:
  its own header parser reads a fixed 100 kB (the whole file from servers that ignore ranges),
  validates loosely and cannot tell how many bytes it used; we read exactly the bytes we need, count
  them, validate the header strictly, and compare two tensors chunk by chunk as they arrive;
- a small cache of the headers, config and index read over HTTP (tieconv's cache folder, least
  recently used entries evicted past a size bound), so a repo inspected once is inspected again
  offline without its weights ever being downloaded.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .checkpoint import (
    BIN_INDEX,
    BIN_SINGLE,
    CHUNK_BYTES,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    TORCH_DTYPE_OF,
    Checkpoint,
    check_index_holds,
)
from .safetensors_file import SafetensorsFile, _offset
from .tensor_file import StoredTensor
from ..errors import CorruptFileError, InputError
from .safetensors_header import MAX_HEADER_BYTES, SafetensorsHeader, parse_header

if TYPE_CHECKING:
    from ..inspection.report import Report

HUB_SCHEME = "hf://"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# a name ending like this is a local file the user mistyped, never a repo id
LOCAL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".ot",
                   ".tflite", ".npz", ".pb", ".mlmodel", ".nemo", ".pkl", ".joblib", ".zip", ".tar", ".gz")
PROBE_TIMEOUT_SECONDS = 10.0  # the repo probe: connect and read; huggingface_hub's own default is 10 s
HEADER_CACHE_MAX_BYTES = 64 << 20  # headers of a 70B model are ~1 MB: hundreds of repos fit
HEADER_CACHE_SCHEMA = 1


# ---------------------------------------------------------------- local path or repo id


@dataclass(frozen=True)
class RepoRef:
    """A Hub repo named on the command line: `org/name[@revision]` or `hf://org/name[@revision]`."""

    repo: str
    revision: str | None  # as asked; None means the default branch
    text: str  # what the user wrote
    could_be_local: bool = False  # also reads as a local path whose first folder exists

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision or 'main'}"

    def not_found(self, what: str) -> InputError:
        """One line naming the repo, the revision and, for text that reads as a local path too, both readings."""
        if self.could_be_local:
            return InputError(f"no local path {self.text}, and {what}")
        return InputError(what)


def repo_ref(src: str | os.PathLike[str]) -> RepoRef | None:
    """The Hub repo `src` names, or None for a local path.  Decided without any network call.

    A path that exists is local; one starting with `./`, `../`, `/` or `~` is always local; `hf://...`
    is always a repo; anything else huggingface_hub's validator accepts (`org/name`, `gpt2`) is a repo id.
    Path objects are local paths.
    """
    if not isinstance(src, str):
        return None
    text = src
    forced = text.startswith(HUB_SCHEME)
    body = text[len(HUB_SCHEME):] if forced else text
    if not forced:
        if os.path.lexists(text) or text.startswith(("./", "../", "/", "~")) or text in (".", ".."):
            return None
        if text.lower().endswith(LOCAL_SUFFIXES):
            return None
    repo, _, revision = body.partition("@")
    invalid = InputError(f"{text}: not a valid Hub repo id (expected hf://org/name[@revision])")
    if repo.count("/") > 1:  # as validate_repo_id says, without importing huggingface_hub (a fifth of a second)
        if forced:
            raise invalid
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(repo)
        if "@" in body and not revision:
            raise HFValidationError("empty revision")
    except HFValidationError:
        if forced:
            raise invalid from None
        return None
    first = text.split("/")[0]
    could_be_local = not forced and ("/" not in repo or os.path.isdir(first))
    return RepoRef(repo, revision or None, text, could_be_local)


def shadows_repo_id(src: str | os.PathLike[str]) -> bool:
    """True for an existing local path spelled like a repo id `org/name` (the local path wins)."""
    if not isinstance(src, str) or src.startswith(("./", "../", "/", "~")) or "/" not in src:
        return False
    try:
        return repo_ref(HUB_SCHEME + src) is not None
    except InputError:
        return False


# ---------------------------------------------------------------- HTTP: one probe, counted range reads


def _timeout(seconds: float | None = None) -> Any:
    """Every request gets connect and read timeouts: huggingface_hub's session has none of its own."""
    import httpx2
    from huggingface_hub import constants

    read = seconds or float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    return httpx2.Timeout(read, connect=seconds or float(constants.HF_HUB_ETAG_TIMEOUT))


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _network_reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return text


@dataclass
class RepoInfo:
    commit: str
    files: list[str]


def probe(ref: RepoRef) -> RepoInfo:
    """Resolve `ref` on the Hub: one GET with a timeout and no retries (a missing repo answers at once)."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        # olah (and older Hub mirrors) answer only the explicit revision route
        info = HfApi().model_info(ref.repo, revision=ref.revision or "main", timeout=PROBE_TIMEOUT_SECONDS)
    except GatedRepoError:
        raise InputError(f"{ref.label}: the repo is gated; accept its terms on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise ref.not_found(f"Hub repo {ref.repo} has no revision {ref.revision or 'main'}") from None
    except RepositoryNotFoundError:
        raise ref.not_found(f"no Hub repo {ref.label} at {_endpoint()} (a private repo needs HF_TOKEN)") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise ref.not_found(f"the Hub at {_endpoint()} cannot be reached to look up the repo {ref.label} "
                            f"({_network_reason(exc)})") from None
    files = [s.rfilename for s in (info.siblings or [])]
    if not info.sha:
        raise InputError(f"{ref.label}: the Hub did not say which commit this revision is")
    return RepoInfo(info.sha, files)


class OfflineBytesError(InputError):
    """Tensor bytes were asked for while the Hub may not be asked (HF_HUB_OFFLINE)."""


@dataclass
class DownloadCounter:
    bytes: int = 0


@dataclass
class RemoteFiles:
    """Byte ranges of one repo commit's files over HTTP, through huggingface_hub's session, counted."""

    repo: str
    revision: str  # a commit hash: every read sees the same snapshot
    counter: DownloadCounter = field(default_factory=DownloadCounter)
    small_files: list[str] = field(default_factory=list)  # what a conversion copies beside the weights
    offline: bool = False  # no tensor bytes are fetched: HF_HUB_OFFLINE, or a header-only scan
    compared: dict[str, bool] = field(default_factory=dict)  # "a\nb" -> bytes identical, remembered

    def _stream(self, filename: str, start: int, length: int, chunk: int, sizes: list[int | None] | None = None,
                whole: bool = False) -> Iterator[bytes]:
        """`length` bytes from `start`; with `whole`, the whole file (no Range), refusing one over `length`."""
        import httpx2
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session  # type: ignore[attr-defined]

        where = f"{self.repo}@{self.revision[:12]}: {filename}"
        if self.offline:
            raise OfflineBytesError(f"{where}: the tensor bytes are needed and may not be fetched")
        url = hf_hub_url(self.repo, filename, revision=self.revision)
        headers = build_hf_headers(headers={} if whole else {"Range": f"bytes={start}-{start + length - 1}"})
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=_timeout()) as response:
                if response.status_code == 404:
                    raise InputError(f"{where}: not on the Hub (404)")
                if response.status_code == 416:
                    raise CorruptFileError(f"{where}: the file is shorter than its header says")
                if response.status_code not in (200, 206):
                    raise InputError(f"{where}: the Hub answered {response.status_code}")
                if sizes is not None:
                    sizes.append(_total_size(response))
                skip = start if response.status_code == 200 else 0  # the server ignored the range
                remaining = length
                for data in response.iter_bytes(chunk):
                    self.counter.bytes += len(data)
                    if whole and len(data) > remaining:
                        raise CorruptFileError(f"{where}: over {length} bytes, far too large for this file")
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
        except httpx2.TimeoutException:
            raise InputError(f"{where}: the Hub stopped answering (no data for {_timeout().read:.0f} s); "
                             "try again later") from None
        except httpx2.HTTPError as exc:
            raise InputError(f"{where}: reading from the Hub failed ({_network_reason(exc)})") from None
        if remaining and not whole:
            raise CorruptFileError(f"{where}: the file ended {remaining} bytes early")

    def read(self, filename: str, start: int, length: int, sizes: list[int | None] | None = None) -> bytes:
        if length <= 0:
            return b""
        return b"".join(self._stream(filename, start, length, max(min(length, CHUNK_BYTES), 1), sizes))

    def read_whole(self, filename: str, max_bytes: int) -> bytes:
        """A small file (config, index) whole, refusing one larger than `max_bytes`."""
        return b"".join(self._stream(filename, 0, max_bytes, 1 << 16, whole=True))

    def iter_range(self, filename: str, start: int, length: int, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield exactly `length` bytes from `start`, in chunks of `chunk` bytes (the last may be shorter)."""
        pending = bytearray()
        for data in self._stream(filename, start, length, chunk):
            pending += data
            while len(pending) >= chunk:
                yield bytes(pending[:chunk])
                del pending[:chunk]
        if pending:
            yield bytes(pending)

    def header_bytes(self, filename: str) -> tuple[bytes, int]:
        """The raw header (`8 + N` bytes read: its length, then itself) and the file's size."""
        sizes: list[int | None] = []
        prefix = self.read(filename, 0, 8, sizes)
        size = sizes[0] if sizes else None
        length = int.from_bytes(prefix, "little")
        where = f"{self.repo}/{filename}"
        if length > MAX_HEADER_BYTES:
            raise CorruptFileError(f"{where}: header claims {length} bytes, over the {MAX_HEADER_BYTES}-byte cap")
        if size is not None and 8 + length > size:
            raise CorruptFileError(f"{where}: truncated: header claims {length} bytes")
        return self.read(filename, 8, length), size if size is not None else 8 + length


def _total_size(response: Any) -> int | None:
    """The whole file's size from a 206's Content-Range or a 200's Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) if response.status_code == 200 and length and length.isdigit() else None


# ---------------------------------------------------------------- the header cache (tieconv's cache folder)


def _header_cache_dir() -> Path:
    from ..knowledge.architecture import cache_dir

    return cache_dir() / f"hub-headers-v{HEADER_CACHE_SCHEMA}"


def _entry_path(repo: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return _header_cache_dir() / f"{repo_folder_name(repo_id=repo, repo_type='model')}--{commit}.json"


def _load_entry(repo: str, commit: str) -> dict[str, Any] | None:
    path = _entry_path(repo, commit)
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        os.utime(path)  # least recently used goes first
    except (OSError, ValueError):
        return None
    return entry if _valid_entry(entry, commit) else None


def _valid_entry(entry: Any, commit: str) -> bool:
    """The shape `_read_headers` writes (a damaged or foreign file is ignored, never trusted)."""
    if not isinstance(entry, dict) or entry.get("commit") != commit:
        return False
    headers, index = entry.get("headers"), entry.get("index")
    return (isinstance(headers, dict) and bool(headers)
            and all(isinstance(h, dict) and isinstance(h.get("size"), int) and isinstance(h.get("raw"), str)
                    for h in headers.values())
            and (entry.get("config") is None or isinstance(entry["config"], dict))
            and (index is None or (isinstance(index, dict) and isinstance(index.get("weight_map"), dict)
                                   and all(isinstance(v, str) for v in index["weight_map"].values())))
            and isinstance(entry.get("small_files", []), list) and isinstance(entry.get("compared", {}), dict)
            and isinstance(entry.get("refs", {}), dict))


def _entry_for_ref(repo: str, revision: str) -> tuple[str, float] | None:
    """(commit, when) of the newest entry that `revision` resolved to, from tieconv's header cache."""
    from huggingface_hub.file_download import repo_folder_name

    best = None
    folder = _header_cache_dir()
    prefix = f"{repo_folder_name(repo_id=repo, repo_type='model')}--"
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".json")]
    except OSError:
        return None
    for name in names:
        try:
            with open(folder / name, encoding="utf-8") as f:
                entry = json.load(f)
            when = entry["refs"][revision]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(when, (int, float)) or not isinstance(entry.get("commit"), str):
            continue
        if best is None or when > best[1]:
            best = (entry["commit"], when)
    return best


def _store_entry(repo: str, commit: str, entry: dict[str, Any]) -> None:
    """Write atomically, then evict least recently used entries past the size bound; never fail the command."""
    try:
        folder = _header_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(entry, separators=(",", ":"))
        if len(text) > HEADER_CACHE_MAX_BYTES:
            return
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".entry-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        target = _entry_path(repo, commit)
        os.replace(tmp, target)
        _evict(folder, keep=target)
    except OSError:
        pass


def _evict(folder: Path, keep: Path) -> None:
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".json"):
            try:
                st = (folder / name).stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, folder / name))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= HEADER_CACHE_MAX_BYTES:
            break
        if path == keep:
            continue
        try:
            path.unlink()
            total -= size
        except OSError:
            pass


# ---------------------------------------------------------------- the Hugging Face cache


def _cached_commit(ref: RepoRef) -> str | None:
    """The commit the HF cache maps `ref`'s revision to (huggingface_hub's `refs/` files), without network."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    base = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref.repo, repo_type="model")
    revision = ref.revision or "main"
    if COMMIT.match(revision):
        return revision if (base / "snapshots" / revision).is_dir() else None
    try:
        commit = (base / "refs" / revision).read_text().strip()
    except OSError:
        return None
    return commit if COMMIT.match(commit) else None


def _snapshot_state(repo: str, commit: str) -> tuple[Path | None, list[str]]:
    """(snapshot folder, missing weight files): the folder is None when the cache holds no weights list at all."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        found = try_to_load_from_cache(repo, name, revision=commit)
        return Path(found) if isinstance(found, str) else None

    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = cached(index_name)
        if index is not None:
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return index.parent, []  # let the reader name what is wrong with it
            return index.parent, [s for s in shards if not isinstance(s, str) or cached(s) is None]
    for single in (SAFETENSORS_SINGLE, BIN_SINGLE):
        found = cached(single)
        if found is not None:
            return found.parent, []
    config = cached("config.json")
    if config is not None:
        return config.parent, ["the weights"]
    return None, []


# ---------------------------------------------------------------- opening a repo for inspect


def _weights_of(files: list[str]) -> tuple[str, list[str]] | None:
    """('safetensors', [index or single]) / ('bin', ...) / ('other', [file]) the repo's top level holds."""
    top = [f for f in files if "/" not in f]
    if SAFETENSORS_INDEX in top:
        return "safetensors-index", [SAFETENSORS_INDEX]
    if SAFETENSORS_SINGLE in top:
        return "safetensors", [SAFETENSORS_SINGLE]
    singles = [f for f in top if f.endswith(".safetensors")]
    if len(singles) == 1:
        return "safetensors", singles
    if BIN_INDEX in top:
        return "bin-index", [BIN_INDEX]
    if BIN_SINGLE in top:
        return "bin", [BIN_SINGLE]
    others = [f for f in top if f.endswith((".pth", ".pt", ".gguf", ".bin"))]
    if len(others) == 1:
        return "other", others
    return None


def _shards_of_index(doc: Any, where: str) -> list[str]:
    """Shard names of an index, each validated before any is read (no paths leaving the repo)."""
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptFileError(f"{where}: index has no valid weight_map")
    shards = sorted(set(weight_map.values()))
    for name in shards:
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or "\x00" in name:
            raise CorruptFileError(f"{where}: index names {name!r}, outside the repo; refusing it")
    return shards


def _small_files(files: list[str]) -> list[str]:
    """What a conversion carries beside the weights: the top level's non-weight files and index/config."""
    return sorted(f for f in files if "/" not in f and not f.lower().endswith(WEIGHT_SUFFIXES)
                  and f not in (SAFETENSORS_INDEX, BIN_INDEX, "config.json") and not f.startswith("."))


def open_repo(ref: RepoRef | str) -> tuple[Checkpoint, DownloadCounter]:
    """A `Checkpoint` for a Hub repo: the cache first, then headers over HTTP (tensor bytes only on demand)."""
    from huggingface_hub import constants

    from .checkpoint import open_checkpoint

    if isinstance(ref, str):
        ref = repo_ref(ref) or RepoRef(ref, None, ref)
    counter = DownloadCounter()
    revision = ref.revision or "main"
    stale = "" if COMMIT.match(revision) else (
        f"; `{revision}` was resolved from the cache, which may be behind the Hub")

    # 1. the Hugging Face cache, without waiting for the network
    commit = _cached_commit(ref)
    missing: list[str] = []
    if commit is not None:
        snapshot, missing = _snapshot_state(ref.repo, commit)
        if snapshot is not None and not missing:
            ckpt = open_checkpoint(snapshot)
            ckpt.notes.append(f"Hub repo {ref.label}: read from the local Hugging Face cache "
                              f"(commit {commit[:12]}){stale}")
            return _as_hub(ckpt, ref), counter

    # 2. headers remembered from an earlier online inspect
    offline = bool(constants.HF_HUB_OFFLINE)
    remembered = None
    if commit is None and not COMMIT.match(revision):
        found = _entry_for_ref(ref.repo, revision)
        if found is not None:
            commit = found[0]
            stale = (f"; `{revision}` was resolved when the headers were read "
                     f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(found[1]))}), and may be behind the Hub")
    elif commit is None:
        commit = revision
    if commit is not None:
        remembered = _load_entry(ref.repo, commit)
    if remembered is not None:
        ckpt = _checkpoint_from_entry(ref, remembered, counter, offline=offline)
        ckpt.notes.append(f"Hub repo {ref.label}: headers read from tieconv's cache (commit {cast(str, commit)[:12]}), "
                          f"not downloaded again{stale}")
        return ckpt, counter

    if offline:
        if missing:
            raise InputError(
                f"{ref.label}: the local Hugging Face cache holds only part of this snapshot (missing "
                f"{', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); download it with "
                f"`hf download {ref.repo}{' --revision ' + ref.revision if ref.revision else ''}`, "
                "or run online (HF_HUB_OFFLINE is set)")
        raise ref.not_found(f"Hub repo {ref.label} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is "
                            "set; run online once, or download it")

    # 3. the Hub
    info = probe(ref)
    if info.commit != commit:
        snapshot, missing = _snapshot_state(ref.repo, info.commit)
        if snapshot is not None and not missing:
            ckpt = open_checkpoint(snapshot)
            ckpt.notes.append(f"Hub repo {ref.label}: read from the local Hugging Face cache (commit "
                              f"{info.commit[:12]})")
            return _as_hub(ckpt, ref), counter
        remembered = _load_entry(ref.repo, info.commit)
        if remembered is not None:
            remembered.setdefault("refs", {})[revision] = time.time()
            _store_entry(ref.repo, info.commit, remembered)
            ckpt = _checkpoint_from_entry(ref, remembered, counter, offline=False)
            ckpt.notes.append(f"Hub repo {ref.label}: headers read from tieconv's cache (commit "
                              f"{info.commit[:12]}), not downloaded again")
            return ckpt, counter
    weights = _weights_of(info.files)
    if weights is None:
        raise InputError(f"{ref.label}: the repo holds no weights tieconv reads at its top level "
                         f"(looked for {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, {BIN_SINGLE}, *.pth, *.gguf)")
    kind, _ = weights
    if not kind.startswith("safetensors"):
        path = download(ref, counter, info=info)
        ckpt = open_checkpoint(path)
        ckpt.notes.append(f"Hub repo {ref.label}: no safetensors, so the weights were downloaded into the cache")
        return _as_hub(ckpt, ref), counter
    entry = _read_headers(ref, info, weights[1][0], counter)
    entry["refs"] = {revision: time.time()}
    _store_entry(ref.repo, info.commit, entry)
    ckpt = _checkpoint_from_entry(ref, entry, counter, offline=False)
    ckpt.notes.append(f"Hub repo {ref.label} (commit {info.commit[:12]}): safetensors headers read over HTTP; "
                      "tensor bytes are fetched only for the comparison")
    return ckpt, counter


def _as_hub(ckpt: Checkpoint, ref: RepoRef) -> Checkpoint:
    ckpt.path = Path(ref.text)
    ckpt.layout = "hub"
    return ckpt


def _read_headers(ref: RepoRef, info: RepoInfo, first: str, counter: DownloadCounter) -> dict[str, Any]:
    """Config, index and every weight file's header, read over HTTP into a cache entry."""
    from .checkpoint import MAX_CONFIG_BYTES, MAX_INDEX_BYTES

    remote = RemoteFiles(ref.repo, info.commit, counter)
    entry: dict[str, Any] = {"repo": ref.repo, "commit": info.commit, "config": None, "headers": {},
                   "small_files": _small_files(info.files)}
    if "config.json" in info.files:
        entry["config"] = _json(remote.read_whole("config.json", MAX_CONFIG_BYTES), f"{ref.label}/config.json")
    if first == SAFETENSORS_INDEX:
        index = _json(remote.read_whole(SAFETENSORS_INDEX, MAX_INDEX_BYTES), f"{ref.label}/{SAFETENSORS_INDEX}",
                      max_values=None)
        shards = _shards_of_index(index, f"{ref.label}/{SAFETENSORS_INDEX}")
        absent = [s for s in shards if s not in info.files]
        if absent:
            raise CorruptFileError(f"{ref.label}: the index names {absent[0]}, which the repo does not hold")
        entry["index"] = index
    else:
        shards = [first]
    for name in shards:
        raw, size = remote.header_bytes(name)
        parse_header(raw, size, f"{ref.label}/{name}")  # validate before remembering it
        entry["headers"][name] = {"size": size, "raw": raw.decode("utf-8")}
    return entry


def _json(raw: bytes, where: str, max_values: int | None = -1) -> Any:
    """A remote JSON file, held to the same limits (depth, values, strings) as a local one.

    `max_values`: -1 for a config's limit, None for none (an index: its tensor count is checked later).
    """
    from .checkpoint import MAX_CONFIG_VALUES, _check_json_shape

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptFileError(f"{where}: not valid UTF-8 JSON; fix the file on the Hub") from None
    _check_json_shape(doc, Path(where), "JSON file", MAX_CONFIG_VALUES if max_values == -1 else max_values, raw)
    return doc


def _checkpoint_from_entry(ref: RepoRef, entry: dict[str, Any], counter: DownloadCounter, *, offline: bool) -> Checkpoint:
    config = entry.get("config")
    if config is not None and not isinstance(config, dict):
        raise CorruptFileError(f"{ref.label}/config.json: config is not a JSON object")
    remote = RemoteFiles(ref.repo, entry["commit"], counter, list(entry.get("small_files", [])), offline=offline,
                         compared={k: v for k, v in dict(entry.get("compared") or {}).items() if isinstance(v, bool)})
    ckpt = Checkpoint(Path(ref.text), Path(ref.repo), "hub", config, "config.json" if config else None, remote=remote)
    for name, header in entry["headers"].items():
        where = f"{ref.label}/{name}"
        parsed = parse_header(header["raw"].encode("utf-8"), header["size"], where)
        ckpt.add_file(RemoteSafetensors(name, Path(where), parsed, remote), where)
    index = entry.get("index")
    if index is not None:
        check_index_holds(ckpt, index["weight_map"], ref.label)
    for backend in ckpt.backends.values():
        ckpt.record_aliases(backend.metadata)
    if index is not None and isinstance(index.get("metadata"), dict):
        ckpt.record_aliases(index["metadata"])  # huggingface_hub's sharded save records dropped names here only
    return ckpt


class RemoteSafetensors(SafetensorsFile):
    """A safetensors file of a Hub repo: its header read over HTTP, its tensors' bytes by range requests."""

    streams_values: ClassVar[bool] = True

    def __init__(self, name: str, label: Path, header: SafetensorsHeader, remote: RemoteFiles) -> None:
        super().__init__(name, label, header)
        self.remote = remote

    def iter_bytes(self, info: StoredTensor, chunk_bytes: int) -> Iterator[bytes]:
        return self.remote.iter_range(self.name, _offset(info), info.nbytes, chunk_bytes)

    def read_range(self, info: StoredTensor, start: int, length: int) -> bytes:
        return self.remote.read(self.name, _offset(info) + start, length)

    def load_tensor(self, info: StoredTensor) -> Any:
        import torch

        dtype = getattr(torch, TORCH_DTYPE_OF[info.dtype])
        data = bytearray(b"".join(self.iter_bytes(info, CHUNK_BYTES)))
        return torch.frombuffer(data, dtype=dtype).reshape(info.shape) if data else torch.empty(info.shape, dtype=dtype)

    def load_all(self) -> dict[str, Any]:
        return {key: self.load_tensor(info) for key, info in self.tensors.items()}


def inspect_repo(ref: RepoRef, *, embed: str | None = None, head: str | None = None, compare: bool = True) -> Report:
    """`inspect` for a Hub repo: its report, with the bytes fetched to decide in `downloaded_bytes`."""
    ckpt, counter = open_repo(ref)
    return inspect_opened(ref, ckpt, counter, embed=embed, head=head, compare=compare)


def inspect_opened(ref: RepoRef, ckpt: Checkpoint, counter: DownloadCounter, *, embed: str | None = None,
                   head: str | None = None, compare: bool = True, header_only: bool = False) -> Report:
    """The report of a repo `open_repo` opened; `header_only` fetches no tensor bytes (remembered comparisons
    still count), as offline."""
    from ..inspection.inspector import inspect_checkpoint

    remote = ckpt.remote
    remembered = dict(remote.compared) if remote is not None else {}
    if remote is not None and header_only:
        remote.offline = True
    try:
        report = inspect_checkpoint(ckpt, embed=embed, head=head, compare=compare)
    except OfflineBytesError:
        why = "header-only" if header_only else "offline"
        ckpt.notes.append(f"{why}: the two matrices were not compared (no comparison of them is remembered)")
        report = inspect_checkpoint(ckpt, embed=embed, head=head, compare=False)
    if remote is not None and remote.compared != remembered:
        entry = _load_entry(ref.repo, remote.revision)
        if entry is not None:
            entry["compared"] = {**entry.get("compared", {}), **remote.compared}
            _store_entry(ref.repo, remote.revision, entry)
    report.downloaded_bytes = counter.bytes
    return report


# ---------------------------------------------------------------- downloading for conversions and loads


def local_path(src: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """`src` itself, or for a Hub repo id the cache snapshot holding what a conversion or a load needs."""
    ref = repo_ref(src)
    if ref is None:
        return src
    return download(ref)


def files_to_download(files: list[str], index: dict[str, Any] | None = None) -> list[str]:
    """Exactly the files a conversion needs: the weight files of one format (those its index names, or the
    single file) and the small files at the top level.  Never a second weight format
    (`consolidated.safetensors` beside `model.safetensors`), never a subfolder's weights."""
    weights = _weights_of(files)
    if weights is None:
        return []
    kind, (first,) = weights
    wanted = [first]
    if kind.endswith("-index"):
        wanted += _shards_of_index(index, first) if index is not None else []
    if "config.json" in files:
        wanted.append("config.json")
    return sorted(set(wanted) | set(_small_files(files)))


def download(ref: RepoRef | str, counter: DownloadCounter | None = None, *, info: RepoInfo | None = None) -> Path:
    """Download what a conversion needs into the HF cache (see `files_to_download`); the cache first."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    if isinstance(ref, str):
        ref = repo_ref(ref) or RepoRef(ref, None, ref)
    commit = _cached_commit(ref)
    if commit is not None:
        snapshot, missing = _snapshot_state(ref.repo, commit)
        if snapshot is not None and not missing:
            return snapshot
    if constants.HF_HUB_OFFLINE:
        raise ref.not_found(f"Hub repo {ref.label} is not (completely) in the local Hugging Face cache, and "
                            "HF_HUB_OFFLINE is set; run online once, or download it")
    info = info or probe(ref)
    index = None
    weights = _weights_of(info.files)
    if weights is None:
        raise InputError(f"{ref.label}: the repo holds no weights tieconv reads at its top level")
    blobs = _blobs_folder(ref.repo)
    before = _blob_sizes(blobs)
    try:
        if weights[0].endswith("-index"):
            index_path = hf_hub_download(ref.repo, weights[1][0], revision=info.commit)
            index = json.loads(Path(index_path).read_text(encoding="utf-8"))
        wanted = files_to_download(info.files, index)
        # the revision as asked, so the cache's refs/ maps it (the next run then finds it without the network)
        path = Path(snapshot_download(ref.repo, revision=ref.revision or "main", allow_patterns=wanted))
    except (InputError, CorruptFileError):
        raise
    except ValueError as exc:
        raise CorruptFileError(f"{ref.label}: {weights[1][0]}: not valid JSON ({str(exc)[:120]})") from None
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's and httpx's errors, turned into one line
        raise InputError(f"{ref.label}: downloading from the Hub failed ({_network_reason(exc)})") from None
    if counter is not None:
        after = _blob_sizes(blobs)
        counter.bytes += sum(size for name, size in after.items() if name not in before)
    return path


def _blobs_folder(repo: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "blobs"


def _blob_sizes(blobs: Path) -> dict[str, int]:
    try:
        return {e.name: e.stat().st_size for e in os.scandir(blobs) if e.is_file()}
    except OSError:
        return {}
