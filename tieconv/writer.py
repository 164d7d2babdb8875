"""Streaming safetensors writer and all-or-nothing output folders.

A safetensors file is written header first (offsets are known from the plan), then
each tensor's bytes are copied from its source in bounded chunks, so converting a
hundred-gigabyte model never holds more than one chunk in memory.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import OutputError

ALIGN = 8  # the reference writer pads the header with spaces so the data starts 8-byte aligned
TMP_MARK = ".tieconv-tmp-"


@dataclass(frozen=True)
class WriteEntry:
    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterator[bytes]]  # yields exactly nbytes in total
    src_path: Path | None = None  # when set, the bytes are a range of this file: copied in the kernel
    src_offset: int = 0


def header_bytes(entries: list[WriteEntry], metadata: dict[str, str] | None) -> bytes:
    doc: dict = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for e in entries:
        doc[e.key] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: Path, entries: list[WriteEntry], metadata: dict[str, str] | None) -> int:
    """Write `entries` to `path`; returns the file's size.

    Entries that name a source file range are copied with `os.copy_file_range` (no
    trip through user space, and never decoded); the others stream their chunks.
    """
    head = header_bytes(entries, metadata)
    with _open_new(path) as f:
        f.write(head)
        f.flush()
        sources: dict[Path, int] = {}
        try:
            for e in entries:
                if e.src_path is not None:
                    if e.src_path not in sources:
                        sources[e.src_path] = os.open(e.src_path, os.O_RDONLY)
                    copy_range(sources[e.src_path], f.fileno(), e.src_offset, e.nbytes)
                    continue
                written = 0
                for chunk in e.chunks():
                    f.write(chunk)
                    written += len(chunk)
                f.flush()
                if written != e.nbytes:
                    raise OutputError(f"{path}: {e.key} produced {written} bytes, expected {e.nbytes}")
        finally:
            for fd in sources.values():
                os.close(fd)
        os.fsync(f.fileno())
        return os.fstat(f.fileno()).st_size


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes at `offset` of src to dst's current position, in the kernel where it can."""
    remaining = count
    if hasattr(os, "copy_file_range"):
        try:
            while remaining:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), offset + count - remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    while remaining:  # fallback (and the tail after a short kernel copy)
        chunk = os.pread(src_fd, min(remaining, 16 << 20), offset + count - remaining)
        if not chunk:
            raise OutputError(f"source ended {remaining} bytes early while copying")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
        remaining -= len(chunk)


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link `src` at `dst` ("linked"), or copy it where links cannot cross filesystems ("copied")."""
    try:
        os.link(src, dst, follow_symlinks=True)
        return "linked"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    copy_file(src, dst)
    return "copied"


def _open_new(path: Path):
    # O_EXCL|O_NOFOLLOW: never follow a link planted inside the output folder
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def write_text(path: Path, text: str) -> None:
    with _open_new(path) as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, _open_new(dst) as fout:
        copy_range(fin.fileno(), fout.fileno(), 0, os.fstat(fin.fileno()).st_size)
        os.fsync(fout.fileno())


class OutputFolder:
    """Write into a temporary sibling of `final`, then rename it into place: all or nothing."""

    def __init__(self, final: Path, is_file: bool = False, overwrite: bool = False):
        self.final = final
        self.is_file = is_file
        self.overwrite = overwrite
        self.tmp = final.parent / f"{final.name}{TMP_MARK}{os.getpid()}"

    def __enter__(self) -> Path:
        if os.path.lexists(self.final) and not self.overwrite:
            raise OutputError(f"{self.final}: already exists; choose a new output path, or pass --overwrite")
        if not self.final.parent.is_dir():
            raise OutputError(f"{self.final.parent}: output folder's parent does not exist")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
                raise OutputError(f"{self.final}: {os.strerror(exc.errno)} while writing; free space and retry") from None
            return
        old = None
        if os.path.lexists(self.final):
            if not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise OutputError(f"{self.final}: appeared while writing; not overwriting it")
            # the new output is complete: move the old aside, move the new in, delete the old
            old = self.final.parent / f"{self.final.name}{TMP_MARK}old-{os.getpid()}"
            os.rename(self.final, old)
        if self.is_file:
            (only,) = list(self.tmp.iterdir())
            os.rename(only, self.final)
            self.tmp.rmdir()
        else:
            os.rename(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def group_into_shards(items: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy split of (key, nbytes) in order, like huggingface_hub's splitter (sizes, not tensors)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, nbytes in items:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards
