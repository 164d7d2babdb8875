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
from typing import Callable, Iterator

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


def link_or_copy(src: Path, dst: Path, expected_size: int | None = None) -> str:
    """Hard-link `src` at `dst` ("linked"), or copy it where links cannot cross filesystems ("copied")."""
    if expected_size is not None and os.stat(src).st_size != expected_size:
        raise OutputError(f"{src}: changed during the conversion (now {os.stat(src).st_size} bytes, "
                          f"{expected_size} when it was read); nothing was written")
    try:
        os.link(src, dst, follow_symlinks=True)
        return "linked"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    copy_file(src, dst, expected_size)
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


def copy_file(src: Path, dst: Path, expected_size: int | None = None) -> None:
    """Copy `src` whole; `expected_size` (the size the plan was made from) must still be its size."""
    with open(src, "rb") as fin, _open_new(dst) as fout:
        size = os.fstat(fin.fileno()).st_size
        if expected_size is not None and size != expected_size:
            raise OutputError(f"{src}: is {size} bytes now, {expected_size} when it was read: it changed during "
                              "the conversion; nothing was written")
        copy_range(fin.fileno(), fout.fileno(), 0, size)
        os.fsync(fout.fileno())


class OutputFolder:
    """Write into a temporary sibling of `final`, then rename it into place: all or nothing.

    A lock file beside `final` (`<OUT>.tieconv-lock`, flock) lets one process write a given OUT at a
    time; another fails at once. Temporary folders are named `<OUT>.tieconv-tmp-<pid>` so that a
    later run can recognise the ones a killed process left behind and remove them, but only when
    that process is no longer alive.
    """

    def __init__(self, final: Path, is_file: bool = False, overwrite: bool = False, needed_bytes: int = 0):
        self.final = final
        self.is_file = is_file
        self.overwrite = overwrite
        self.needed_bytes = needed_bytes
        self.tmp = final.parent / f"{final.name}{TMP_MARK}{os.getpid()}"
        self.lock_path = final.parent / f"{final.name}{LOCK_MARK}"
        self._lock_fd: int | None = None

    def __enter__(self) -> Path:
        if not self.final.parent.is_dir():
            raise OutputError(f"{self.final.parent}: output folder's parent does not exist")
        self._lock()
        try:
            if os.path.lexists(self.final) and not self.overwrite:
                raise OutputError(f"{self.final}: already exists; choose a new output path, or pass --overwrite")
            remove_stale_temporaries(self.final)
            free = shutil.disk_usage(self.final.parent).free
            if self.needed_bytes > free:
                raise OutputError(f"{self.final}: needs {self.needed_bytes} bytes but only {free} are free on "
                                  f"{self.final.parent}; free space and retry")
            self.tmp.mkdir()  # fails on anything already there, a planted link included
        except BaseException:
            self._unlock()
            raise
        return self.tmp

    def _lock(self) -> None:
        import fcntl

        try:
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:  # a link planted at the lock's name is never followed
            raise OutputError(f"{self.lock_path}: cannot create the lock file ({exc.strerror}); "
                              "remove it if no tieconv process is running") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{self.final}: another tieconv process is writing it (lock {self.lock_path}); "
                              "wait for it or choose another output") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish(exc_type, exc)
        finally:
            self._unlock()

    def _finish(self, exc_type, exc) -> None:
        if exc_type is not None:
            _remove(self.tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise OutputError(
                    f"{self.final}: {os.strerror(exc.errno).lower()} while writing; the output needs "
                    f"{self.needed_bytes} bytes: free space (or raise the file size limit) and retry"
                ) from None
            return
        old = None
        if os.path.lexists(self.final):
            if not self.overwrite:
                _remove(self.tmp)
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
            _remove(old)


LOCK_MARK = ".tieconv-lock"


def _remove(path: Path) -> None:
    """Remove a file, link or folder without ever following a link."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove `<OUT>.tieconv-tmp-<pid>` leftovers whose process is gone; keep those of live processes."""
    removed = []
    prefix = f"{final.name}{TMP_MARK}"
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        tail = entry.name[len(prefix):].removeprefix("old-")
        if not tail.isdigit() or (_alive(int(tail)) and int(tail) != os.getpid()):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


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
