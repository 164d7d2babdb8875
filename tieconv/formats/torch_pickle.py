"""The torch pickle backend: `.bin` / `.pt` / `.pth` / `.ckpt` files, loaded by `torch.load` with
`weights_only=True` (memory-mapped when the file is a zip archive) after `pickle_scan` refused what
would need code to load; their tensors are then read from memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CorruptFileError, InputError, UnsafePickleError, UnsupportedCheckpointError
from .tensor_file import StoredTensor, TensorFile

# Keys under which training checkpoints keep the model's state dict (nanoGPT, torchtune, Lightning).
NESTED_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")


class TorchPickle(TensorFile):
    """A torch file named `name`: `obj` is everything it holds (a training checkpoint's optimizer too,
    kept memory-mapped so a conversion rewrites the wrapper without a reload), `state_dict` its tensors."""

    writes_as: ClassVar[str] = "torch"

    def __init__(self, name: str, path: Path, notes: list[str]) -> None:
        super().__init__(name)
        self.path = path
        self.obj = load_pickle(path, notes)
        self.state_dict, nested = _find_state_dict(self.obj, path)
        if nested:
            notes.append(f"{name}: state dict read from the training checkpoint's {nested!r} entry")
        for key, t in self.state_dict.items():
            _check_plain_tensor(path, key, t)
        self._tensors = {
            key: StoredTensor(key, torch_dtype_name(t.dtype), tuple(t.shape), t.numel() * t.element_size(), name,
                              (name, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.stride()),
                               tuple(t.shape)))
            for key, t in self.state_dict.items()
        }

    def keys(self) -> list[str]:
        return list(self.state_dict)

    @property
    def tensors(self) -> dict[str, StoredTensor]:
        return self._tensors

    def iter_bytes(self, info: StoredTensor, chunk_bytes: int) -> Iterator[bytes]:
        flat = self._flat_bytes(info.key)
        for start in range(0, info.nbytes, chunk_bytes):
            yield flat[start : start + chunk_bytes].numpy().tobytes()

    def read_range(self, info: StoredTensor, start: int, length: int) -> bytes:
        return bytes(self._flat_bytes(info.key)[start : start + length].numpy().tobytes())

    def _flat_bytes(self, key: str) -> Any:
        import torch

        return self.state_dict[key].contiguous().reshape(-1).view(torch.uint8)

    def load_tensor(self, info: StoredTensor) -> Any:
        return self.state_dict[info.key]  # the tensor torch.load returned, not a copy

    def load_all(self) -> dict[str, Any]:
        return dict(self.state_dict)


_TORCH_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int8": "I8", "uint8": "U8",
    "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "complex64": "C64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}


TORCH_DTYPE_OF = {v: k for k, v in _TORCH_DTYPES.items()}  # safetensors name -> torch attribute


def torch_dtype_name(dtype: object) -> str:
    name = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(name, name.upper())


def load_pickle(path: Path, notes: list[str] | None = None) -> Any:
    """`torch.load` with `weights_only=True`, memory-mapped when the file is a zip archive."""
    import pickle
    import zipfile

    from .pickle_scan import check_torch_file

    check_torch_file(path)  # before importing torch: a refusal costs milliseconds
    import torch

    mmap = zipfile.is_zipfile(path)
    if not mmap and notes is not None:
        notes.append(f"{path.name} is a legacy (non-zip) pickle: read whole into memory, it cannot be memory-mapped")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # torch's weights-only unpickler raises UnpicklingError both for globals it will not
        # import (code) and for opcodes it does not know (garbage); only the former is "unsafe"
        if "global" in str(exc).lower():
            raise UnsafePickleError(
                f"{path}: refused: this pickle needs arbitrary code to load, which tieconv never runs "
                f"({_unsafe_detail(str(exc))}); ask for a safetensors file"
            ) from None
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({first})") from None
    except Exception as exc:  # noqa: BLE001 - anything torch raises on a hostile file is bad input
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({detail[:200]})") from None


def _unsafe_detail(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:200]
    return "unsupported global"


def _find_state_dict(obj: Any, path: Path) -> tuple[dict[str, Any], str]:
    import torch


    def tensors_of(d: dict[Any, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}

    if isinstance(obj, dict):
        found = tensors_of(obj)
        if found and len(found) >= len(obj) / 2:
            return found, ""
        for key in NESTED_STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and tensors_of(inner):
                return tensors_of(inner), key
        if found:
            return found, ""
    raise InputError(f"{path}: holds no state dict of tensors (looked at the top level and {NESTED_STATE_DICT_KEYS})")


EXPANDED_VIEW_BYTES = 16 << 20  # a broadcast view may claim more than its storage, up to this much


def _check_plain_tensor(path: Path, key: str, t: Any) -> None:
    """Refuse tensors tieconv cannot stream as bytes, before anything asks for their size or bytes.

    A view with stride 0 claims more elements than its storage holds (a 2 KB file can claim 4 TiB):
    materialising it to learn or copy its bytes would allocate all of them.
    """
    import torch

    kind = ("sparse" if t.layout != torch.strided else "nested" if t.is_nested
            else "quantized" if t.is_quantized else f"on the {t.device.type} device" if t.device.type != "cpu" else "")
    if kind:
        raise UnsupportedCheckpointError(f"{path}: tensor {key!r} is {kind}; tieconv reads plain dense CPU tensors "
                                         "(save it with .to_dense() / .cpu() / real values)")
    claimed = t.numel() * t.element_size()
    held = t.untyped_storage().nbytes()
    if claimed > max(held, EXPANDED_VIEW_BYTES):
        raise CorruptFileError(f"{path}: tensor {key!r} claims {claimed} bytes over a storage of {held} "
                               "(a stride-0 or overlapping view); refusing to materialise it")


