"""What every weight file offers, whatever its format, and the table that maps each key to its file.

A checkpoint's layout (a folder, one file, a sharded index, a Hub repo: `checkpoint.py`) is a list of
weight files; each file is read by the backend of its format, behind one interface (`TensorFile`):

| backend | module | bytes come from |
|---|---|---|
| `SafetensorsFile` | `safetensors_file.py` | the file, at the offsets its header gives |
| `RemoteSafetensors` | `hub.py` | a Hub repo's file, by HTTP range requests |
| `TorchPickle` | `torch_pickle.py` | the tensors `torch.load` returned (memory-mapped) |
| `GGUFFile` | `gguf_file.py` | the file, at the offsets its tensor table gives |

Adding a format is one new module with one `TensorFile` subclass, and a line in `checkpoint.py`
that says which file names it reads.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..errors import CorruptFileError

CHUNK_BYTES = 16 << 20
MAX_TENSORS = 1_000_000  # per checkpoint (the largest public MoE models have about 150,000)


class StoredTensor(NamedTuple):  # a tuple, not a dataclass: a 90k-tensor index builds 90k of them
    key: str
    dtype: str  # safetensors' dtype names: BF16, F32...
    shape: tuple[int, ...]
    nbytes: int
    file: str  # path relative to the checkpoint's root folder
    storage: tuple[object, ...]  # equal for tensors that are one object on disk
    offset: int | None = None  # absolute byte offset (safetensors and GGUF)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class TensorFile(ABC):
    """One weight file of a checkpoint, read by the backend of its format.

    `name` is the file's path relative to the checkpoint's root. A conversion writes the format
    `writes_as` names ("safetensors", "torch" or "gguf") for a checkpoint of such files.
    """

    writes_as: ClassVar[str]
    # iter_bytes yields values of a torch dtype straight from storage, so a numeric comparison can stream
    # rows of them instead of loading both tensors (safetensors; not pickles, already loaded, nor GGUF types)
    streams_values: ClassVar[bool] = False
    # no two keys share bytes, so a key is its own storage (safetensors: the header tiles the data exactly,
    # validated); where keys may share (pickles' views, a GGUF table's offsets) `storage` tells
    keys_own_their_bytes: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def keys(self) -> Iterable[str]:
        """The keys of the tensors this file stores, cheaply (no per-tensor object is built)."""

    @property
    @abstractmethod
    def tensors(self) -> Mapping[str, StoredTensor]:
        """Every tensor of this file, described (built on first use)."""

    @property
    def metadata(self) -> dict[str, str]:
        """The file's own string metadata (safetensors' `__metadata__`); empty where the format has none."""
        return {}

    @property
    def identity(self) -> tuple[int, ...] | None:
        """The local file's identity when it was read (`file_cache.identity`); None where not tracked."""
        return None

    @property
    def size(self) -> int | None:
        """The file's size in bytes when it was read, where a copy must check it (safetensors)."""
        return None

    def totals(self) -> tuple[int, int, int]:
        """(stored parameters, parameters of distinct storage, bytes of distinct storage)."""
        tensors = self.tensors.values()
        unique = {t.storage: t for t in tensors}
        return (sum(t.numel for t in tensors), sum(t.numel for t in unique.values()),
                sum(t.nbytes for t in unique.values()))

    @abstractmethod
    def iter_bytes(self, info: StoredTensor, chunk_bytes: int) -> Iterator[bytes | bytearray]:
        """The stored bytes of `info` in chunks of at most `chunk_bytes` (a full chunk may be a reused buffer)."""

    @abstractmethod
    def read_range(self, info: StoredTensor, start: int, length: int) -> bytes:
        """`length` stored bytes of `info` from byte `start` (already clamped to the tensor)."""

    @abstractmethod
    def load_tensor(self, info: StoredTensor) -> Any:
        """`info` as a torch tensor (memory-mapped where the format allows)."""

    def load_all(self) -> dict[str, Any]:
        """Every tensor of this file as a torch tensor."""
        return {key: self.load_tensor(info) for key, info in self.tensors.items()}

    def check_torch_loadable(self, where: str) -> None:
        """Refuse, naming the file, what cannot become torch tensors as stored (`where`: the checkpoint)."""


class TensorTable(Mapping[str, StoredTensor]):
    """Every stored tensor of a checkpoint by key, described by its file's backend when first asked for.

    Opening a 90k-tensor index builds no object per tensor: a dict from key to backend is all, filled
    with `dict.fromkeys` in C; the few keys an inspection looks at are described on demand.
    """

    def __init__(self) -> None:
        self._file_of: dict[str, TensorFile] = {}

    def add(self, backend: TensorFile, where: str) -> None:
        """Map the keys of `backend` to it, refusing a key another file already holds (`where` names the file)."""
        added = dict.fromkeys(backend.keys(), backend)
        if not self._file_of.keys().isdisjoint(added):
            key = min(self._file_of.keys() & added.keys())
            raise CorruptFileError(f"{where}: key {key!r} is also stored in {self._file_of[key].name}")
        if len(self._file_of) + len(added) > MAX_TENSORS:
            raise CorruptFileError(f"{where}: the checkpoint holds over {MAX_TENSORS} tensors, far more than "
                                   "any real model; refusing it")
        self._file_of.update(added)

    def file_of(self, key: str) -> TensorFile:
        """The backend of the file that stores `key`."""
        return self._file_of[key]

    def __getitem__(self, key: str) -> StoredTensor:
        return self._file_of[key].tensors[key]

    def __contains__(self, key: object) -> bool:
        return key in self._file_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def __repr__(self) -> str:
        return f"<TensorTable of {len(self)} tensors>"


def stream_file_range(path: Path, offset: int, nbytes: int, chunk_bytes: int, key: str) -> Iterator[bytes | bytearray]:
    """`nbytes` bytes of the file at `path` from `offset`, in chunks of at most `chunk_bytes`.

    Full chunks share one reused bytearray (compare or write each before asking for the next);
    bytearray == bytearray is a memcmp, memoryview == is per item.
    """
    buffer = bytearray(min(chunk_bytes, max(nbytes, 1)))
    view = memoryview(buffer)
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = nbytes
        while remaining:
            want = min(remaining, len(buffer))
            got = 0
            while got < want:
                n = f.readinto(view[got:want])
                if not n:
                    raise CorruptFileError(f"{path}: truncated while reading {key!r}")
                got += n
            remaining -= want
            yield buffer if want == len(buffer) else buffer[:want]


def read_file_range(owner: TensorFile, path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of the file at `path` (read by the backend `owner`) from `offset`.

    The descriptor stays open for the next read: sampled verification reads six ranges of each tensor,
    and for a 90k-tensor index opening the file for every read cost several times the reads. At most
    MAX_OPEN_FILES stay open (least recently used closed first); one is closed with its backend.
    """
    with _descriptors_lock:
        fd = _descriptors.get(id(owner))
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            _descriptors[id(owner)] = fd
            weakref.finalize(owner, _close_descriptor, id(owner), fd)
            while len(_descriptors) > MAX_OPEN_FILES:
                _close_descriptor(*next(iter(_descriptors.items())))
        else:
            _descriptors.move_to_end(id(owner))
        return os.pread(fd, length, offset)


MAX_OPEN_FILES = 32
_descriptors: OrderedDict[int, int] = OrderedDict()  # id of a live backend -> its open descriptor
_descriptors_lock = threading.RLock()


def _close_descriptor(owner_id: int, fd: int) -> None:
    with _descriptors_lock:
        if _descriptors.get(owner_id) == fd:  # not already closed (evicted, then the backend collected)
            del _descriptors[owner_id]
            os.close(fd)
