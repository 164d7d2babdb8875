"""What tieconv derived from a file, remembered by the file's identity, so a warm inspect of a large
checkpoint reads small marshal files instead of parsing and validating megabytes of JSON again (the
parse, not the I/O, is what costs: 10 MB of headers and a 9 MB index for DeepSeek-V3).

The identity is (device, inode, size, mtime and ctime in ns): ctime cannot be set back by a user, so a
changed file misses and is parsed and validated again. Cache files are named by device and inode (no
realpath, no hash: for 161 shards those cost more than the reads). Values are marshalled: builtins
only, loaded faster than JSON or pickle. A damaged or foreign cache file is ignored, never trusted
beyond its shape; a cache folder that cannot be written is silently skipped.
"""

from __future__ import annotations

import marshal
import os
from stat import S_ISREG
import tempfile
from typing import Any

_SCHEMA = 4  # bump when what any kind stores changes


def identity(stat: os.stat_result) -> tuple[int, ...]:
    return (_SCHEMA, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _cache_file(kind: str, stat: os.stat_result) -> str:
    from ..knowledge.architecture import cache_dir

    return os.path.join(cache_dir(), "headers", f"{kind}-{stat.st_dev:x}-{stat.st_ino:x}.marshal")


def _private(st: os.stat_result) -> bool:
    """Written by this user alone: owned by them and writable by nobody else."""
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def read_private(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of a cache file only this user could have written, else None.

    A cache entry is trusted (a header's offsets decide which bytes are read, and the verification
    reads through the same cache), so an entry someone else could plant — a shared or group-writable
    cache folder, a file owned by another user, a FIFO or a link — is ignored, never opened for reading.
    """
    folder = os.path.dirname(os.fspath(path))
    try:
        if not _private(os.stat(folder)):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode) or not _private(st):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def load(kind: str, stat: os.stat_result) -> Any:
    """What `store` recorded of the file with `stat` as `kind`, or None (absent, changed, damaged, foreign)."""
    entry = recorded(kind, stat)
    return entry[1] if entry is not None and entry[0] == identity(stat) else None


def recorded(kind: str, stat: os.stat_result) -> tuple[Any, Any] | None:
    """(the identity it was recorded for, the value) that `store` recorded as `kind` of the file at `stat`'s
    device and inode, whatever its identity now; None when absent, damaged or foreign. For a caller that can
    check a value recorded for another identity against the file's own bytes: deleting a hard link to a file
    (an earlier `tie --link` output) changes its ctime, and with it the identity, though no byte changed.
    """
    data = read_private(_cache_file(kind, stat))
    if data is None:
        return None
    try:
        recorded_identity, value = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    return recorded_identity, value


def store(kind: str, stat: os.stat_result, value: Any) -> None:
    """Record `value` (builtins only) for the file with `stat`, atomically."""
    try:
        target = _cache_file(kind, stat)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{kind}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps((identity(stat), value)))
        os.replace(tmp, target)
    except (OSError, ValueError):
        pass


def carry_over_link(kind: str, before: os.stat_result, after: os.stat_result) -> None:
    """Keep what was recorded of a file across the hard link tieconv just made to it (`tie --link`).

    A link changes the file's ctime only, so without this every linked shard would miss the cache, in
    the output's verification and in every later inspect of the input. Carried only when the entry
    matches the file as it was just before the link (it has not changed since it was validated) and
    the link changed nothing but the ctime (same inode, size and mtime).
    """
    if (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns) != \
            (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
        return
    value = load(kind, before)
    if value is not None:
        store(kind, after, value)
