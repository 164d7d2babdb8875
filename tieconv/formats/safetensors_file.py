"""The safetensors backend: a local file whose strictly validated header (`safetensors_header`) gives
every tensor's dtype, shape and byte range, so bytes stream straight from the file."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CorruptFileError, UnsupportedCheckpointError
from .safetensors_header import SafetensorsHeader
from .tensor_file import StoredTensor, TensorFile, read_file_range, stream_file_range
from .torch_pickle import TORCH_DTYPE_OF

_new_stored = functools.partial(tuple.__new__, StoredTensor)  # called by map(): no Python frame per tensor


class SafetensorsFile(TensorFile):
    """A safetensors file named `name` (relative to the checkpoint's root), at `path`, with its header."""

    writes_as: ClassVar[str] = "safetensors"
    streams_values: ClassVar[bool] = True
    keys_own_their_bytes: ClassVar[bool] = True

    def __init__(self, name: str, path: Path, header: SafetensorsHeader) -> None:
        super().__init__(name)
        self.path = path
        self.header = header

    def keys(self) -> list[str]:
        return self.header.names

    @functools.cached_property
    def tensors(self) -> dict[str, StoredTensor]:
        """Built column-wise by map() and zip(), which run in C (a 90k-tensor index: tens of milliseconds,
        not a quarter second); each tensor is its own storage, as the header tiles the data exactly."""
        header, name = self.header, self.name
        keys = header.names
        dtypes, shapes, begins, ends = header.columns
        nbytes = map(operator.sub, ends, begins)
        storages = zip(repeat(name), begins, ends)
        offsets = map(operator.add, repeat(header.data_start), begins)
        return dict(zip(keys, map(_new_stored, zip(keys, dtypes, shapes, nbytes, repeat(name), storages, offsets))))

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    @property
    def identity(self) -> tuple[int, ...] | None:
        return self.header.identity

    @property
    def size(self) -> int:
        return self.header.data_start + self.header.data_size

    def totals(self) -> tuple[int, int, int]:
        # the data is tiled exactly (validated): every tensor has bytes of its own, so no pass per tensor
        return self.header.numel, self.header.numel, self.header.data_size

    def iter_bytes(self, info: StoredTensor, chunk_bytes: int) -> Iterator[bytes | bytearray]:
        return stream_file_range(self.path, _offset(info), info.nbytes, chunk_bytes, info.key)

    def read_range(self, info: StoredTensor, start: int, length: int) -> bytes:
        return read_file_range(self, self.path, _offset(info) + start, length)

    def load_tensor(self, info: StoredTensor) -> Any:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(info.key)

    def load_all(self) -> dict[str, Any]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:  # opened once, every tensor memory-mapped
            return {key: f.get_tensor(key) for key in f.keys()}

    def check_torch_loadable(self, where: str) -> None:
        for key, dtype in zip(self.header.names, self.header.columns[0]):
            if dtype not in TORCH_DTYPE_OF:
                raise UnsupportedCheckpointError(
                    f"{self.path}: tensor {key!r} is stored as {dtype}, which torch has no dtype for; "
                    "load it with a library that reads that format")


def _offset(info: StoredTensor) -> int:
    if info.offset is None:  # never: every safetensors tensor has one
        raise CorruptFileError(f"{info.file}: no offset recorded for {info.key!r}")
    return info.offset
