"""Streaming safetensors writer and all-or-nothing output folders.

A safetensors file is written header first (offsets are known from the plan), then
each tensor's bytes are copied from its source in bounded chunks, so converting a
hundred-gigabyte model never holds more than one chunk in memory.

Durability costs a disk write of the whole output, and it is overlapped with the copy: every
`WRITE_BEHIND_BYTES` written are handed to the disk at once (`WriteBehind`), and the fsync of every
file happens once, after verification (`OutputFolder`'s `fsync_tree`), when little is left to write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from io import BufferedWriter
    from types import TracebackType

from ..errors import OutputError

ALIGN = 8  # the reference writer pads the header with spaces so the data starts 8-byte aligned
TMP_MARK = ".tieconv-tmp-"


@dataclass(frozen=True)
class WriteEntry:
    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterator[bytes | bytearray]]  # yields exactly nbytes in total
    src_path: Path | None = None  # when set, the bytes are a range of this file: copied in the kernel
    src_offset: int = 0


# bytes per element, for alignment: safetensors' writer places every tensor at a multiple of its dtype's size
DTYPE_ALIGN = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4,
               "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def aligned_order(entries: list[WriteEntry]) -> list[WriteEntry]:
    """Entries ordered widest dtype first (stable), as safetensors' writer does: with the data start 8-byte
    aligned and every size a multiple of its element size, each tensor then starts at a multiple of it."""
    return sorted(entries, key=lambda e: -DTYPE_ALIGN.get(e.dtype, 1))


def header_bytes(entries: list[WriteEntry], metadata: dict[str, str] | None) -> bytes:
    doc: dict[str, Any] = {}
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
    """Write `entries` to `path`; returns the file's size. Made durable by `OutputFolder` (fsync_tree).

    Entries that name a source file range are copied with `os.copy_file_range` (no
    trip through user space, and never decoded); the others stream their chunks.
    """
    entries = aligned_order(entries)
    head = header_bytes(entries, metadata)
    with _open_new(path) as f:
        f.write(head)
        f.flush()
        behind = WriteBehind(f.fileno())
        sources: dict[Path, int] = {}
        try:
            for e in entries:
                if e.src_path is not None:
                    if e.src_path not in sources:
                        sources[e.src_path] = os.open(e.src_path, os.O_RDONLY)
                    copy_range(sources[e.src_path], f.fileno(), e.src_offset, e.nbytes, behind)
                    continue
                written = 0
                for chunk in e.chunks():
                    f.write(chunk)
                    written += len(chunk)
                    behind.written_up_to(f.tell())
                f.flush()
                if written != e.nbytes:
                    raise OutputError(f"{path}: {e.key} produced {written} bytes, expected {e.nbytes}")
        finally:
            for fd in sources.values():
                os.close(fd)
        return os.fstat(f.fileno()).st_size


def write_gguf(path: Path, header: bytes, src: Path, pieces: list[tuple[int, int]], alignment: int) -> None:
    """Write a GGUF file: `header`, then each `(offset, nbytes)` of `src` copied in the kernel and padded
    with zeros to `alignment` (`gguf_file.output_header` lays them out). Made durable by `OutputFolder`."""
    with _open_new(path) as f:
        f.write(header)
        f.flush()
        behind = WriteBehind(f.fileno())
        source = os.open(src, os.O_RDONLY)
        try:
            for offset, nbytes in pieces:
                copy_range(source, f.fileno(), offset, nbytes, behind)
                padding = memoryview(bytes(-nbytes % alignment))
                while padding:
                    padding = padding[os.write(f.fileno(), padding):]
        finally:
            os.close(source)


COPY_STEP = 64 << 20  # bytes per copy_file_range / pread call: the unit of write-behind too


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int, behind: WriteBehind | None = None) -> None:
    """Copy `count` bytes at `offset` of src to dst's current position, in the kernel where it can.

    `behind` (for dst) hands each copied step to the disk while the next one is copied.
    """
    behind = behind or WriteBehind(dst_fd)
    start = os.lseek(dst_fd, 0, os.SEEK_CUR)
    remaining = count
    if hasattr(os, "copy_file_range"):
        try:
            while remaining:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, COPY_STEP), offset + count - remaining)
                if n == 0:
                    break
                remaining -= n
                behind.written_up_to(start + count - remaining)
        except OSError as exc:  # the filesystem (or an old kernel) cannot copy these files in the kernel
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    while remaining:  # fallback (and the tail after a short kernel copy)
        chunk = os.pread(src_fd, min(remaining, COPY_STEP), offset + count - remaining)
        if not chunk:
            raise OutputError(f"source ended {remaining} bytes early while copying")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view):]
        remaining -= len(chunk)
        behind.written_up_to(start + count - remaining)


WRITE_BEHIND_BYTES = COPY_STEP
_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4


class WriteBehind:
    """Hands a file's bytes to the disk as they are written, so its final fsync has little left to do.

    Without it the kernel starts writing only once ~10% of memory is dirty, and making the output
    durable (fsync, before the rename) would add a whole disk write after the copy; the durable copy
    then took copy + write (2.4 s for the 2.5 GB benchmark) instead of about the longer of the two.
    Every `WRITE_BEHIND_BYTES` written, that stretch's write-out is started and the stretch before
    it waited for (`sync_file_range`, the pattern its man page gives): the copy never runs more than
    two stretches ahead of the disk, so the page cache holds a bounded amount of unwritten output.
    `sync_file_range` alone makes nothing durable (no metadata, no disk cache flush): fsync still does.
    Linux only (through libc: the os module has no wrapper); elsewhere it does nothing.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.started = os.lseek(fd, 0, os.SEEK_CUR)  # bytes before it are the header: left to fsync
        self.waited = self.started

    def written_up_to(self, end: int) -> None:
        if end - self.started < WRITE_BEHIND_BYTES:
            return
        if _sync_file_range(self.fd, self.started, end - self.started, _SYNC_WRITE) and self.started > self.waited:
            _sync_file_range(self.fd, self.waited, self.started - self.waited,
                             _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER)
        self.waited, self.started = self.started, end


_sync_file_range_func: Any = None  # libc's sync_file_range, False where there is none


def _sync_file_range(fd: int, offset: int, count: int, flags: int) -> bool:
    """libc's sync_file_range; False (and nothing done) where the platform or file system lacks it."""
    global _sync_file_range_func
    if _sync_file_range_func is None:
        _sync_file_range_func = False
        import sys

        if sys.platform.startswith("linux"):
            import ctypes

            func = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
            if func is not None:
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range_func = func
    if _sync_file_range_func is False:
        return False
    if _sync_file_range_func(fd, offset, count, flags) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP):
        return False  # not for this file (a pipe, some file systems): the final fsync does all the work
    raise OSError(err, os.strerror(err))


def link_or_copy(src: Path, dst: Path, expected_size: int | None = None) -> str:
    """Hard-link `src` at `dst` ("linked"), or copy it where links cannot cross filesystems ("copied")."""
    before = os.stat(src)
    if expected_size is not None and before.st_size != expected_size:
        raise OutputError(f"{src}: changed during the conversion (now {before.st_size} bytes, "
                          f"{expected_size} when it was read); nothing was written")
    try:
        os.link(src, dst, follow_symlinks=True)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    else:
        from ..formats import file_cache

        file_cache.carry_over_link("header", before, os.stat(dst))
        return "linked"
    copy_file(src, dst, expected_size)
    return "copied"


def _open_new(path: Path) -> BufferedWriter:
    # O_EXCL|O_NOFOLLOW: never follow a link planted inside the output folder
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def write_text(path: Path, text: str) -> None:
    """Write a new file (made durable by `OutputFolder`, like every file written inside it)."""
    with _open_new(path) as f:
        f.write(text.encode("utf-8"))


def copy_file(src: Path, dst: Path, expected_size: int | None = None) -> None:
    """Copy `src` whole; `expected_size` (the size the plan was made from) must still be its size.

    Made durable by `OutputFolder` (fsync_tree), after verification: the disk writes the copy meanwhile.
    """
    with open(src, "rb") as fin, _open_new(dst) as fout:
        size = os.fstat(fin.fileno()).st_size
        if expected_size is not None and size != expected_size:
            raise OutputError(f"{src}: is {size} bytes now, {expected_size} when it was read: it changed during "
                              "the conversion; nothing was written")
        if hasattr(os, "posix_fadvise"):  # as cp does: a larger read-ahead when the input is not cached
            os.posix_fadvise(fin.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        copy_range(fin.fileno(), fout.fileno(), 0, size)


class OutputFolder:
    """Write into a temporary sibling of `final`, then swap it into place: all or nothing.

    A lock file beside `final` (`<OUT>.tieconv-lock`, flock) lets one process write a given OUT at a
    time; another fails at once. The temporary `<OUT>.tieconv-tmp-<pid>-<random>` is recorded in an
    ownership record beside it (`<OUT>.tieconv-own-<pid>-<random>`, JSON naming the temporary and its
    inode), never inside it, so a later run removes exactly what a dead tieconv process created and
    nothing that is merely named like it (a user's file may be called `out.tieconv-tmp-999999`).

    Replacing an existing OUT (`overwrite`) never leaves OUT absent: folders are exchanged in one
    atomic step (`renameat2(RENAME_EXCHANGE)` on Linux), files replaced with `os.replace`; after the
    exchange the temporary's name holds the old copy, which is deleted. Where the exchange is not
    available, the old copy is moved aside under a recorded name first, and a later run that finds OUT
    absent moves it back. SIGINT and SIGTERM are held back from the swap until the record is updated;
    one that arrived then is reported in `interrupted_after_swap` instead of failing a finished run.
    """

    def __init__(self, final: Path, is_file: bool = False, overwrite: bool = False, needed_bytes: int = 0):
        self.final = final
        self.is_file = is_file
        self.overwrite = overwrite
        self.needed_bytes = needed_bytes
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp = final.parent / f"{final.name}{TMP_MARK}{tag}"
        self.record = final.parent / f"{final.name}{OWN_MARK}{tag}"
        self.lock_path = final.parent / f"{final.name}{LOCK_MARK}"
        self.interrupted_after_swap = False
        self._lock_fd: int | None = None

    def __enter__(self) -> Path:
        check_output_parent(self.final)
        self._lock()
        try:
            recover(self.final)
            if os.path.lexists(self.final) and not self.overwrite:
                raise OutputError(f"{self.final}: already exists; choose a new output path, or pass --overwrite")
            free = shutil.disk_usage(self.final.parent).free
            if self.needed_bytes > free:
                raise OutputError(f"{self.final}: needs {self.needed_bytes} bytes but only {free} are free on "
                                  f"{self.final.parent}; free space and retry")
            # the record first, so no kill leaves a temporary nobody owns; then the temporary, then its inode
            _write_record(self.record, {"tmp": self.tmp.name, "state": "creating"})
            self.tmp.mkdir()  # fails on anything already there, a planted link included
            _write_record(self.record, {"tmp": self.tmp.name, "ino": self.tmp.lstat().st_ino, "state": "writing"})
        except OSError as exc:
            self._unlock()
            raise OutputError(f"{self.final.parent}: cannot write there ({exc.strerror or exc})") from None
        except BaseException:
            self._unlock()
            raise
        return self.tmp

    def _lock(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a link planted at the lock's name is never followed
                    raise OutputError(f"{self.lock_path}: is a link, not tieconv's lock file; remove it") from None
                raise OutputError(f"{self.final.parent}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{self.final}: another tieconv process is writing it (lock {self.lock_path}); "
                                  "wait for it or choose another output") from None
            # the holder before us unlinks the lock when done: make sure we locked the file at the name now
            try:
                same = os.stat(self.lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._finish(exc_type, exc)
        finally:
            self._unlock()

    def _finish(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        if exc_type is not None:
            _remove(self.tmp)
            _remove(self.record)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise OutputError(
                    f"{self.final}: {os.strerror(exc.errno).lower()} while writing; the output needs "
                    f"{self.needed_bytes} bytes: free space (or raise the file size limit) and retry"
                ) from None
            return
        try:
            fsync_tree(self.tmp)  # a failed write-out (ENOSPC, EIO) may be reported only here
        except OSError as failed:
            self._finish(type(failed), failed)  # removes the temporary; ENOSPC is said as such
            raise OutputError(f"{self.final}: the disk could not store the output ({failed.strerror or failed}); "
                              "nothing was written") from None
        except BaseException:  # Ctrl-C or SIGTERM while the output is flushed: OUT untouched, nothing left
            _remove(self.tmp)
            _remove(self.record)
            raise
        try:
            with _signals_held() as held:
                self._swap_into_place()
        except OutputError:  # refused before anything was moved: OUT is as it was
            _remove(self.tmp)
            _remove(self.record)
            raise
        except OSError as failed:  # EIO on a rename, say: the record lets the next run restore or clean up
            raise OutputError(f"{self.final}: the output could not be put in place ({failed.strerror or failed}); "
                              f"run tieconv into {self.final} again to restore or clean up what is left") from None
        self.interrupted_after_swap = held.arrived

    def _swap_into_place(self) -> None:
        final, tmp = self.final, self.tmp
        exists = os.path.lexists(final)
        if exists and not self.overwrite:
            raise OutputError(f"{final}: appeared while writing; not overwriting it")
        if self.is_file:
            (only,) = list(tmp.iterdir())
            if exists and final.is_dir() and not final.is_symlink():
                raise OutputError(f"{final}: is a folder; a file output never replaces a folder")
            os.replace(only, final)  # atomic: OUT is the old file or the new one, never absent
            _fsync_dir(final.parent)
            os.rmdir(tmp)
        elif not exists:
            rename_noreplace(tmp, final)
            _fsync_dir(final.parent)
        else:
            if not final.is_dir() and not final.is_symlink():
                raise OutputError(f"{final}: is a file; a folder output never replaces a file")
            # after the exchange the temporary's name holds the old OUT's inode: record both as ours
            _write_record(self.record, {"tmp": tmp.name, "ino": tmp.lstat().st_ino, "state": "swapping",
                                        "alt_ino": final.lstat().st_ino})
            if exchange(tmp, final):
                # the temporary's name now holds the old OUT, still listed in the record as ours
                _fsync_dir(final.parent)
            else:  # no atomic exchange here: move the old aside under a recorded name, then the new in
                old = final.parent / f"{final.name}{TMP_MARK}old-{self.tmp.name.rsplit(TMP_MARK, 1)[1]}"
                old_ino = final.lstat().st_ino  # the old copy ends under the temporary's name: alt_ino
                _write_record(self.record, {"tmp": tmp.name, "ino": tmp.lstat().st_ino, "state": "moving",
                                            "old": old.name, "old_ino": old_ino, "alt_ino": old_ino})
                os.rename(final, old)
                os.rename(tmp, final)
                _fsync_dir(final.parent)
                os.rename(old, tmp)  # the old copy under the temporary's recorded name (its inode recorded)
                _write_record(self.record, {"tmp": tmp.name, "ino": tmp.lstat().st_ino, "state": "writing"})
            _remove(tmp)
        _remove(self.record)


LOCK_MARK = ".tieconv-lock"
OWN_MARK = ".tieconv-own-"
RECORD_MAGIC = "tieconv ownership record v1"


class _Held:
    arrived = False


@contextlib.contextmanager
def _signals_held() -> Iterator[_Held]:
    """Hold SIGINT/SIGTERM back while OUT is being swapped; note one that arrived meanwhile.

    Python's handlers are replaced by one that only notes the signal, rather than blocking the
    signals with pthread_sigmask: a mask holds for the calling thread only, and once torch is
    imported (a first run learning an architecture) the kernel hands a process-wide Ctrl-C to one
    of torch's threads, whose handler then interrupted the swap anyway.
    """
    import signal
    import threading

    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum: int, frame: object) -> None:
        held.arrived = True

    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # one by one inside the try: each installed one is restored
            previous[sig] = signal.signal(sig, note)
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _write_record(path: Path, doc: dict[str, Any]) -> None:
    """Write an ownership record atomically (a new file renamed over the old one), durably."""
    body = json.dumps({"magic": RECORD_MAGIC, "pid": os.getpid(), **doc}).encode()
    part = path.parent / (path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)
    _fsync_dir(path.parent)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4096:
            return None
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("magic") != RECORD_MAGIC or not isinstance(doc.get("pid"), int):
        return None
    return doc


def _owned(folder: Path, name: object, ino: object) -> Path | None:
    """The path a record names, if it is still the very entry tieconv created (same inode), else None.

    A record written just before its temporary was created has no inode yet: the name is then ours
    only as an empty folder (mkdir succeeds only where nothing was), the state a kill right after
    the mkdir leaves.
    """
    if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
        return None
    path = folder / name
    try:
        st = path.lstat()
    except OSError:
        return None
    if ino is None:
        return path if stat.S_ISDIR(st.st_mode) and not any(path.iterdir()) else None
    return path if st.st_ino == ino else None


def recover(final: Path) -> list[Path]:
    """Finish or undo what dead tieconv processes left beside `final`, using their ownership records.

    Only entries a record names and whose inode still matches are touched; records of live
    processes are left alone. A run that was killed after moving the old OUT aside (where no atomic
    exchange exists) left OUT absent: the old copy is moved back.
    """
    removed = []
    prefix = f"{final.name}{OWN_MARK}"
    # a record's `.part` is complete once it parses (it is written whole, then renamed): a kill between
    # the two leaves only the `.part`, which names what it owns just as well
    for entry in sorted(final.parent.iterdir(), key=lambda e: e.name.endswith(".part")):
        if not entry.name.startswith(prefix) or not entry.exists():
            continue
        doc = _read_record(entry)
        if doc is None or (_alive(doc["pid"]) and doc["pid"] != os.getpid()):
            continue
        if doc.get("state") == "moving":
            old = _owned(final.parent, doc.get("old"), doc.get("old_ino"))
            if old is not None and not os.path.lexists(final):
                os.rename(old, final)  # the old OUT back in place
                _fsync_dir(final.parent)
            elif old is not None:
                _remove(old)
                removed.append(old)
        tmp = _owned(final.parent, doc.get("tmp"), doc.get("ino"))
        if tmp is None and "alt_ino" in doc:
            tmp = _owned(final.parent, doc.get("tmp"), doc.get("alt_ino"))
        if tmp is not None:
            _remove(tmp)
            removed.append(tmp)
        _remove(entry)
    return removed


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
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def check_output_parent(final: Path) -> None:
    """OUT's parent must be an existing, writable folder (said before any work is done)."""
    parent = final.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: does not exist; create the output's parent folder first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: cannot write there (permission denied); choose another output folder")
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = len(f"{final.name}{TMP_MARK}old-{os.getpid()}-00000000.part".encode())
    if longest > limit:
        room = limit - (longest - len(final.name.encode()))
        raise OutputError(f"{final}: the name is too long for this file system (at most {max(room, 1)} bytes "
                          "leave room for tieconv's temporary suffix); choose a shorter name")


def fsync_tree(root: Path) -> None:
    """fsync every file and folder below `root` (then `root`): the output is durable before it is renamed."""
    for folder, dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2 through libc (the os module has no wrapper); False where it is not available."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        return False
    at_fdcwd = -100
    if func(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # the file system cannot do it
    raise OSError(err, os.strerror(err), str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the platform or file system cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename, failing if `dst` appeared meanwhile (plain rename over an empty folder would succeed)."""
    if not _renameat2(src, dst, _RENAME_NOREPLACE):
        if os.path.lexists(dst):
            raise OutputError(f"{dst}: appeared while writing; not overwriting it")
        os.rename(src, dst)


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
