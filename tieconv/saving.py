"""`save`: safetensors with shared tensors written once, under the name a loader needs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import SAFETENSORS_INDEX
from .errors import OutputError
from .names import KNOWN_PAIRS, strip_wrappers


@dataclass
class SaveResult:
    files: list[str]
    bytes_written: int  # size of the weight files on disk
    bytes_saved: int  # tensor bytes not written thanks to deduplication
    dropped: dict[str, str] = field(default_factory=dict)  # dropped name -> kept name

    def to_dict(self) -> dict:
        return {"files": self.files, "bytes_written": self.bytes_written, "bytes_saved": self.bytes_saved,
                "dropped": self.dropped}


def _view_key(t) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def _preferred_names(obj) -> list[str]:
    """Names a loader needs kept when a storage has several: the tie map's sources first."""
    preferred = []
    try:
        from .hooks import _transformers_tie_map

        preferred += [s for _, s in _transformers_tie_map(obj)]
    except Exception:  # noqa: BLE001 - not a transformers model
        pass
    preferred += [e for e, _ in KNOWN_PAIRS]
    return preferred


def _choose(names: list[str], preferred: list[str]) -> str:
    for p in preferred:
        for n in names:
            if n == p or strip_wrappers(n) == p:
                return n
    return sorted(names, key=lambda n: (n.count("."), n))[0]


def deduplicate(state_dict: dict, preferred: list[str]) -> tuple[dict, dict[str, str]]:
    """Keep one name per identical view of a storage; return (kept tensors, dropped -> kept)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state_dict.items():
        groups.setdefault(_view_key(t), []).append(name)
    kept, dropped = {}, {}
    for names in groups.values():
        keep = _choose(names, preferred)
        kept[keep] = state_dict[keep]
        for n in names:
            if n != keep:
                dropped[n] = keep
    # views that overlap without being identical cannot be written by reference: give them their own bytes
    by_storage: dict[int, list[str]] = {}
    for name, t in kept.items():
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for names in by_storage.values():
        if len(names) > 1:
            for n in names:
                kept[n] = kept[n].clone()
    ordered = {n: kept[n] for n in state_dict if n in kept}
    return ordered, dropped


def save(obj, path: str | os.PathLike, *, max_shard_size: int | str = "5GB",
         metadata: dict[str, str] | None = None) -> SaveResult:
    """Save a module or a state dict to the folder `path` as safetensors, deduplicating shared tensors.

    Tensors that share storage are written once under the name a loader needs (the tie map's
    source: the embedding, not the head) and each dropped name is recorded in the file's
    `__metadata__` as `dropped -> kept`. Shards follow the Hugging Face naming
    (`model-00001-of-00002.safetensors` + `model.safetensors.index.json`); a transformers model
    also gets its `config.json`.

    Example:
        >>> import tempfile, torch, tieconv
        >>> emb = torch.nn.Embedding(8, 4)
        >>> sd = {"tok_embeddings.weight": emb.weight.data, "output.weight": emb.weight.data}
        >>> result = tieconv.save(sd, tempfile.mkdtemp())
        >>> result.dropped, result.bytes_saved
        ({'output.weight': 'tok_embeddings.weight'}, 128)
    """
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    if isinstance(obj, torch.nn.Module):
        state_dict = obj.state_dict()
        config = getattr(obj, "config", None)
    elif isinstance(obj, dict):
        state_dict, config = obj, None
    else:
        raise OutputError(f"save() takes a torch module or a state dict, not {type(obj).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OutputError(f"state dict entry {bad[0]!r} is not a tensor")
    kept, dropped = deduplicate(state_dict, _preferred_names(obj))
    kept = {k: v.detach().to("cpu").contiguous() for k, v in kept.items()}
    split = split_torch_state_dict_into_shards(kept, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tieconv-save-", dir=folder))
    files = []
    try:
        for filename, names in split.filename_to_tensors.items():
            meta = {"format": "pt", **(metadata or {})}
            meta.update({d: k for d, k in dropped.items() if k in names})
            save_file({n: kept[n] for n in names}, tmp / filename, metadata=meta)
            files.append(filename)
        if split.is_sharded:
            index = {"metadata": {**split.metadata, "total_size": sum(t.numel() * t.element_size() for t in kept.values())},
                     "weight_map": split.tensor_to_filename}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if config is not None and hasattr(config, "to_json_string"):
            (tmp / "config.json").write_text(config.to_json_string())
        # remove weights of an earlier save that this one does not overwrite, then move the new files in
        for old in list(folder.glob("model*.safetensors")) + [folder / SAFETENSORS_INDEX]:
            if old.is_file() and old.name not in files:
                old.unlink()
        for f in tmp.iterdir():
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    written = sum((folder / f).stat().st_size for f in files)
    saved = sum(state_dict[d].numel() * state_dict[d].element_size() for d in dropped)
    return SaveResult([str(folder / f) for f in files], written, saved, dropped)

