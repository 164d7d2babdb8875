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
    """Write `entries` to `path`; returns the file's size."""
    head = header_bytes(entries, metadata)
    with _open_new(path) as f:
        f.write(head)
        for e in entries:
            written = 0
            for chunk in e.chunks():
                f.write(chunk)
                written += len(chunk)
            if written != e.nbytes:
                raise OutputError(f"{path}: {e.key} produced {written} bytes, expected {e.nbytes}")
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


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
        shutil.copyfileobj(fin, fout, 16 << 20)
        fout.flush()
        os.fsync(fout.fileno())


class OutputFolder:
    """Write into a temporary sibling of `final`, then rename it into place: all or nothing."""

    def __init__(self, final: Path, is_file: bool = False):
        self.final = final
        self.is_file = is_file
        self.tmp = final.parent / f"{final.name}{TMP_MARK}{os.getpid()}"

    def __enter__(self) -> Path:
        if os.path.lexists(self.final):
            raise OutputError(f"{self.final}: already exists; choose a new output path or remove it")
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
        if os.path.lexists(self.final):
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"{self.final}: appeared while writing; not overwriting it")
        if self.is_file:
            (only,) = list(self.tmp.iterdir())
            os.replace(only, self.final)
            self.tmp.rmdir()
        else:
            os.rename(self.tmp, self.final)
        _fsync_dir(self.final.parent)


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
