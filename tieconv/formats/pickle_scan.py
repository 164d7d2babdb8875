"""Checks on a torch checkpoint's zip archive and pickle before `torch.load` sees them.

Why our own: `torch.load(weights_only=True)` refuses code, but not work. A 433-byte pickle can
build a tuple of 2**80 leaves out of memo references and use it as a dict key (hashing it never
ends, and no signal interrupts the hash); a deflated `data.pkl` can expand to gigabytes; an archive
can list millions of members. These checks read only the archive's directory and the pickle's
opcodes (`pickletools.genops`, no object is built), so they cost milliseconds on real checkpoints.
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from ..errors import CorruptFileError

MAX_PICKLE_BYTES = 64 << 20  # data.pkl of a 100,000-tensor checkpoint is about 15 MB
MAX_ARCHIVE_MEMBERS = 1_000_000  # torch.save writes one member per storage, plus a few
MAX_HASHED_NODES = 100_000  # leaves of one dict key, set item or constructor argument (real ones: < 20)
HASH_BUDGET = 50_000_000  # all of them together, for the whole pickle
LEGACY_PICKLES = 4  # a legacy file starts with a magic number, a protocol, sys info, then the objects


def check_torch_file(path: Path) -> None:
    """Refuse archives and pickles whose loading would cost unbounded time or memory."""
    if zipfile.is_zipfile(path):
        _check_archive(path)
        return
    with open(path, "rb") as f:
        for _ in range(LEGACY_PICKLES):
            if not f.peek(1):
                return
            _scan(f, path)


def _check_archive(path: Path) -> None:
    with open(path, "rb") as f:
        # the member count before zipfile builds an object per member (a private helper, stable since Python 2)
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    if end and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ARCHIVE_MEMBERS:  # type: ignore[attr-defined]
        raise CorruptFileError(f"{path}: the archive lists {end[zipfile._ECD_ENTRIES_TOTAL]} members, "  # type: ignore[attr-defined]
                               f"over the limit of {MAX_ARCHIVE_MEMBERS}; not a torch checkpoint?")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = []
            for info in archive.infolist():
                is_pickle = info.filename.endswith(".pkl")
                # torch.save stores every member uncompressed; a compressed one is only read whole
                if (is_pickle or info.compress_type != zipfile.ZIP_STORED) and info.file_size > MAX_PICKLE_BYTES:
                    raise CorruptFileError(
                        f"{path}: archive member {info.filename[:80]!r} expands to {info.file_size} bytes, over the "
                        f"{MAX_PICKLE_BYTES}-byte limit for a pickle or a compressed member; refusing it")
                if is_pickle:
                    pickles.append(info)
            for info in pickles:
                with archive.open(info) as stream:  # reads at most file_size bytes, checks the CRC
                    _scan(stream, path)
    except CorruptFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CorruptFileError(f"{path}: not a readable torch archive ({type(exc).__name__}); re-save it") from None


class _Object:
    """A mutable object on the pickle's stack (list, dict, set, or a constructor's result).

    Immutable values (constants, tuples) are plain ints on the scan's stack: their number of leaves.
    """

    __slots__ = ("nodes", "used")

    def __init__(self, nodes: int):
        self.nodes = nodes
        self.used = False  # placed inside another object


def _nodes(value: Any) -> int:  # int | _Object: mypy cannot narrow `type(v) is not int`
    return value if type(value) is int else value.nodes


_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_HASHES_KEYS = {"SETITEM", "SETITEMS"}
_HASHES_ALL = {"ADDITEMS", "FROZENSET"}
_CALLS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"}
_MUTABLE_RESULTS = {"EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT", "EMPTY_SET"} | _CALLS
_SKIP, _MARK, _PUT, _MEMOIZE, _GET, _DUP, _POP, _STOP, _LEAF, _BUILD = range(10)
_CAP = MAX_HASHED_NODES + 1  # counts saturate: only "too many" matters


def _kind(op: pickletools.OpcodeInfo) -> tuple[int, int, bool, int]:
    """(kind, items popped below the mark or in all, pops to a mark, items pushed) of an opcode."""
    name = op.name
    simple = {"STOP": _STOP, "MARK": _MARK, "PROTO": _SKIP, "FRAME": _SKIP, "PUT": _PUT, "BINPUT": _PUT,
              "LONG_BINPUT": _PUT, "MEMOIZE": _MEMOIZE, "GET": _GET, "BINGET": _GET, "LONG_BINGET": _GET,
              "DUP": _DUP, "POP": _POP}
    if name in simple:
        return simple[name], 0, False, 0
    before = op.stack_before
    marked = pickletools.markobject in before
    below = before.index(pickletools.markobject) if marked else len(before)
    if not before and name not in _MUTABLE_RESULTS:
        return _LEAF, 0, False, len(op.stack_after)
    return _BUILD, below, marked, len(op.stack_after)


_KINDS = {op: _kind(op) for op in pickletools.opcodes}


def _scan(stream: IO[bytes], path: Path) -> None:
    """Follow one pickle's stack by opcode, counting the leaves of every object that gets hashed or called."""

    def bomb(why: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: refused: its pickle {why}, which no torch.save writes (a pickle bomb?)")

    stack: list[Any] = []  # int | _Object, as in `_nodes`
    marks: list[int] = []
    memo: dict[object, Any] = {}
    budget = HASH_BUDGET

    def charge(values: Iterable[Any]) -> None:
        nonlocal budget
        for v in values:
            nodes = _nodes(v)
            if nodes > MAX_HASHED_NODES:
                raise bomb(f"hashes or calls with an object of over {MAX_HASHED_NODES} parts")
            budget -= nodes
        if budget < 0:
            raise bomb(f"hashes over {HASH_BUDGET} parts in all")

    try:
        for op, arg, _ in pickletools.genops(stream):
            kind, below, marked, pushed = _KINDS[op]
            if kind == _LEAF:
                stack.append(1)
            elif kind == _PUT:
                memo[arg] = stack[-1]
            elif kind == _GET:
                if arg not in memo:
                    raise CorruptFileError(f"{path}: not a readable torch checkpoint (pickle memo {arg} is unset)")
                stack.append(memo[arg])
            elif kind == _MARK:
                marks.append(len(stack))
            elif kind == _BUILD:
                name = op.name
                if marked:
                    start = marks.pop()
                    children = stack[start:]
                    del stack[start:]
                else:
                    children = []
                fixed = [stack.pop() for _ in range(below)][::-1] if below else []
                if name in _MUTATORS:
                    target, added = fixed[0], fixed[1:] + children
                    if type(target) is int or target.used:
                        raise bomb("changes an object after placing it inside another, or changes a constant")
                    if name in _HASHES_KEYS:
                        charge(added[0::2])
                    elif name == "ADDITEMS":
                        charge(added)
                    for v in added:
                        if type(v) is not int:
                            v.used = True
                    target.nodes = min(target.nodes + sum(map(_nodes, added)), _CAP)
                    stack.append(target)
                    continue
                parts = fixed + children
                if name in _CALLS:
                    charge(parts[1:])
                elif name in _HASHES_ALL:
                    charge(parts)
                for v in parts:
                    if type(v) is not int:
                        v.used = True
                if pushed:
                    nodes = min(1 + sum(map(_nodes, parts)), _CAP)
                    stack.append(_Object(nodes) if name in _MUTABLE_RESULTS else nodes)
            elif kind == _MEMOIZE:
                memo[len(memo)] = stack[-1]
            elif kind == _DUP:
                stack.append(stack[-1])
            elif kind == _POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif kind == _STOP:
                return
    except CorruptFileError:
        raise
    except (ValueError, IndexError, EOFError) as exc:
        raise CorruptFileError(f"{path}: not a readable torch checkpoint (broken pickle: {type(exc).__name__})") from None
    raise CorruptFileError(f"{path}: not a readable torch checkpoint (the pickle has no end)")
