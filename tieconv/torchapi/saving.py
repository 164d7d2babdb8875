"""`save`: safetensors with shared tensors written once, under the name a loader needs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from ..knowledge.names import KNOWN_PAIRS, strip_wrappers
from .storage import overlap_groups, view_key

if TYPE_CHECKING:
    import torch

# files that make a folder "hold weights": saving there needs overwrite=True
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".index.json")
# huggingface_hub splits by size; each shard is then written by one call that must not split again
_ONE_FILE = 1 << 62


@dataclass
class SaveResult:
    """What `save` wrote."""

    files: list[str]
    bytes_written: int  # size of the weight files on disk
    bytes_saved: int  # tensor bytes not written thanks to deduplication
    dropped: dict[str, str] = field(default_factory=dict)  # dropped name -> kept name

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes_written": self.bytes_written, "bytes_saved": self.bytes_saved,
                "dropped": self.dropped}


def save(obj: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
         max_shard_size: int | str = "5GB", metadata: dict[str, str] | None = None,
         overwrite: bool = False) -> SaveResult:
    """Save a module or a state dict to the folder `path` as safetensors, deduplicating shared tensors.

    Tensors that are one view of one storage are written once under the name a loader needs (the
    tie map's source: the embedding, not the head) and each dropped name is recorded as
    `dropped -> kept` in the `__metadata__` of the shard holding the kept tensor and in the index.
    Shards follow the Hugging Face naming (`model-00001-of-00002.safetensors` +
    `model.safetensors.index.json`); a transformers model also gets its `config.json`.

    A folder that already holds weight files (or a file `save` would write) is refused with
    `OutputError` unless `overwrite=True`; then only the old checkpoint's own files
    (`model.safetensors`, the index and the shards it names, `config.json`) are replaced: each new
    file is written beside the target and moved in whole, the index last, then the old files the
    new checkpoint does not use are removed. Other files (`model_backup.safetensors`) stay.

    Example:
        >>> import tempfile, torch, tieconv
        >>> emb = torch.nn.Embedding(8, 4)
        >>> sd = {"tok_embeddings.weight": emb.weight.data, "output.weight": emb.weight.data}
        >>> result = tieconv.save(sd, tempfile.mkdtemp())
        >>> result.dropped, result.bytes_saved
        ({'output.weight': 'tok_embeddings.weight'}, 128)
    """
    from huggingface_hub import constants, split_torch_state_dict_into_shards

    state_dict, config = _state_dict_and_config(obj)
    folder = Path(path)
    single, index_name = constants.SAFETENSORS_SINGLE_FILE, constants.SAFETENSORS_INDEX_FILE
    old_files = _old_files(folder, overwrite, config is not None, single, index_name)
    prepared, dropped = deduplicate(state_dict, _preferred_names(obj))
    split = split_torch_state_dict_into_shards(prepared, filename_pattern=constants.SAFETENSORS_WEIGHTS_FILE_PATTERN,
                                               max_shard_size=max_shard_size)
    new_files = list(split.filename_to_tensors) + ([index_name] if split.is_sharded else [])
    new_files += ["config.json"] if config is not None else []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tieconv-save-", dir=folder))
    except OSError as e:
        raise OutputError(f"cannot create {folder}: {e.strerror or e}; choose another folder") from e
    try:
        _write_shards(prepared, dropped, split.filename_to_tensors, tmp, metadata or {})
        if split.is_sharded:
            index = {"metadata": {**split.metadata, **(metadata or {}), **dropped},
                     "weight_map": {n: f for n, f in split.tensor_to_filename.items() if n not in dropped}}
            (tmp / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if config is not None:
            (tmp / "config.json").write_text(config.to_json_string())
        # The old index goes first and the new one comes after its shards: a crash in between leaves
        # shards without an index, which loaders refuse, never an index over old and new shards mixed.
        if index_name in old_files:
            (folder / index_name).unlink()
        for name in new_files:
            os.replace(tmp / name, folder / name)
        for name in old_files - set(new_files):
            (folder / name).unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {folder}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    weight_files = list(split.filename_to_tensors)
    written = sum((folder / f).stat().st_size for f in weight_files)
    saved = sum(state_dict[d].numel() * state_dict[d].element_size() for d in dropped)
    return SaveResult([str(folder / f) for f in weight_files], written, saved, dropped)


def deduplicate(state_dict: Mapping[str, torch.Tensor],
                preferred: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Prepare a state dict for huggingface_hub's writer: (every name -> a CPU tensor, dropped -> kept).

    Names that are one view of one storage become one tensor owning exactly its storage, and all
    but one of them (the preferred name) are dropped: the writer then finds exactly these groups.
    Tensors that overlap without being the same view, or that are part of a larger storage, get
    their own bytes (the writer could not store them by reference).
    """
    import torch

    groups: dict[Hashable, list[str]] = {}
    for name, t in state_dict.items():
        groups.setdefault(view_key(t), []).append(name)
    kept = {_choose(names, preferred): names for names in groups.values()}
    overlapping = {n for g in overlap_groups({k: state_dict[k] for k in kept}) if len(g) > 1 for n in g}
    prepared: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for keep, names in kept.items():
        t = state_dict[keep].detach().to("cpu")
        if keep in overlapping or not _owns_storage(t):
            t = t.clone(memory_format=torch.contiguous_format)
        for n in names:
            prepared[n] = t
            if n != keep:
                dropped[n] = keep
    return {n: prepared[n] for n in state_dict}, dropped


def _state_dict_and_config(obj: object) -> tuple[dict[str, torch.Tensor], Any]:
    import torch

    if isinstance(obj, torch.nn.Module):
        state_dict, config = obj.state_dict(), getattr(obj, "config", None)
    elif isinstance(obj, Mapping):
        state_dict, config = dict(obj), None
    else:
        raise OutputError(f"save() takes a torch module or a state dict, not {type(obj).__name__}")
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise OutputError(f"state dict entry {name!r} is not a tensor")
        if t.device.type == "meta":
            raise OutputError(f"state dict entry {name!r} is on the meta device: it has no values to save; "
                              "load the weights first")
    return state_dict, config if hasattr(config, "to_json_string") else None


def _owns_storage(t: torch.Tensor) -> bool:
    """True when `t` is contiguous and covers its whole storage, as the writer needs for a kept name."""
    storage = t.untyped_storage()
    return t.is_contiguous() and t.data_ptr() == storage.data_ptr() and t.numel() * t.element_size() == storage.nbytes()


def _write_shards(prepared: dict[str, torch.Tensor], dropped: dict[str, str], shards: dict[str, list[str]],
                  folder: Path, metadata: dict[str, str]) -> None:
    """One huggingface_hub call per shard (its shard names passed as the file name).

    A single call for all shards would record the dropped names only in the index; one call per
    file records each shard's own in its `__metadata__`, as safetensors' `save_model` does.
    """
    from huggingface_hub import save_torch_state_dict

    for filename, names in shards.items():
        save_torch_state_dict({n: prepared[n] for n in names}, folder,
                              filename_pattern=filename.replace(".safetensors", "{suffix}.safetensors"),
                              max_shard_size=_ONE_FILE, metadata=dict(metadata),
                              shared_tensors_to_discard=[n for n in names if n in dropped])


def _old_files(folder: Path, overwrite: bool, writes_config: bool, single: str, index: str) -> set[str]:
    """The files of the checkpoint already in `folder` that saving replaces; refuses without overwrite."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file; save() writes a folder: choose a folder path")
    if not folder.is_dir():
        return set()
    present = {f.name for f in folder.iterdir() if f.is_file()}
    in_the_way = sorted(n for n in present if n.endswith(WEIGHT_SUFFIXES) or (writes_config and n == "config.json"))
    if in_the_way and not overwrite:
        raise OutputError(f"{folder} already holds {', '.join(in_the_way[:3])}"
                          f"{' and more' if len(in_the_way) > 3 else ''}; pass overwrite=True to replace its "
                          "checkpoint, or choose an empty folder")
    own = {single, index} & present  # config.json, when written, is replaced, never removed
    if index in present:
        own |= _shards_named_in(folder / index) & present
    return own


def _shards_named_in(index: Path) -> set[str]:
    """The shard files an index names; only plain file names in its folder count as its own."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(f"{index} is unreadable ({e}), so its shards are unknown; "
                          "remove the old checkpoint by hand or choose an empty folder") from e
    return {f for f in files if isinstance(f, str) and f == Path(f).name and f.endswith(".safetensors")}


def _preferred_names(obj: object) -> list[str]:
    """Names a loader needs kept when a storage has several: the tie map's sources first."""
    import torch

    preferred = []
    if isinstance(obj, torch.nn.Module):
        from .hooks import _transformers_tie_map

        try:
            preferred += [s for _, s in _transformers_tie_map(obj)]
        except Exception:  # noqa: BLE001, S110 - a model whose tie map cannot be built still saves, by the known names
            pass
    preferred += [e for e, _ in KNOWN_PAIRS]
    return preferred


def _choose(names: list[str], preferred: list[str]) -> str:
    for p in preferred:
        for n in names:
            if n == p or strip_wrappers(n) == p:
                return n
    return min(names, key=lambda n: (n.count("."), n))
