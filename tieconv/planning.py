"""Planning `tie` and `untie`: what a conversion will do, computed as plain data before anything is written.

`plan()` inspects the input, decides per verdict what to drop, add or replace and what changes in
the config, and lays the output out file by file (`Plan`): which keys each file holds and where
each one's bytes come from. `--dry-run` and `--json` print it; `convert.execute` carries it out.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import BIN_INDEX, SAFETENSORS_INDEX, Checkpoint, open_checkpoint, safe_member
from .errors import OutputError, RefusedError
from .inspection import coerce_flags, inspect_checkpoint
from .report import Report
from .writer import shard_name

ALWAYS_TIED_IN_VLLM = ("gemma", "gemma2", "gemma3", "gemma3_text", "mpt")


@dataclass(frozen=True)
class PlannedTensor:
    key: str  # key in the output
    source: str  # key in the input whose bytes it gets
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class PlannedFile:
    name: str
    tensors: tuple[PlannedTensor, ...]
    metadata: dict[str, str]
    unchanged_from: str | None = None  # an input file copied (or hard-linked) whole


@dataclass
class Plan:
    action: str  # "tie" | "untie"
    source: str
    destination: str
    input_verdict: str
    output_verdict: str | None  # None when there is nothing to do
    nothing_to_do: bool
    reason: str
    dropped: list[str] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)  # new key -> the key its values come from
    replaced: dict[str, str] = field(default_factory=dict)  # key whose values now come from another key
    config_changes: dict[str, object] = field(default_factory=dict)
    output_layout: str = ""
    files: list[PlannedFile] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    bytes_saved: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    parameters_before: int = 0
    parameters_after: int = 0
    loader_bytes_saved: int = 0  # what a transformers loader no longer allocates (negative: allocates more)
    output_format: str = "safetensors"
    overwrite: bool = False
    left_out: list[str] = field(default_factory=list)  # entries of a training checkpoint not carried over
    link: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["files"] = [
            {"name": f.name, "metadata": f.metadata, "tensors": [t.key for t in f.tensors],
             "unchanged_from": f.unchanged_from}
            for f in self.files
        ]
        return out


def _difference_text(report: Report) -> str:
    from .compare import difference

    ckpt = report.checkpoint
    if report.embed.shape != report.head.shape:
        return f"shapes differ ({report.embed.shape} vs {report.head.shape})"
    d = difference(ckpt, report.embed.key, report.head.key)
    return (
        f"max abs difference {d['max_abs_diff']:.4g}, relative difference {d['relative_diff']:.4g}, "
        f"cosine similarity {d['cosine_similarity']:.4f}"
    )


def _tie_ops(report: Report, keep: str | None, assume_tied: bool, force: bool):
    """(dropped, added, replaced, flag, nothing_to_do, reason) for `tie`."""
    v, e, h = report.verdict, report.embed.key, report.head.key if report.head else None
    path = report.path
    if v == "no-head":
        raise RefusedError(f"{path}: the model has no output head; there is nothing to tie")
    if v in ("untied", "conflict"):
        if report.embed.shape != report.head.shape:
            raise RefusedError(f"{path}: {e} and {h} have different shapes ({report.embed.shape} vs "
                               f"{report.head.shape}) and can never be tied")
        if keep not in ("embed", "head"):
            raise RefusedError(
                f"{path}: {e} and {h} differ ({_difference_text(report)}); tying changes the model's outputs: "
                "pass --keep embed or --keep head to choose the surviving matrix"
            )
        dropped = sorted(set(report.reclaimable_keys) | {h})
        replaced = {e: h} if keep == "head" else {}
        return dropped, {}, replaced, True, False, f"tie {v} keeping the {keep}'s matrix"
    if v == "head-missing":
        if not assume_tied:
            raise RefusedError(
                f"{path}: the config unties but no head is stored; setting the flag makes the model use its "
                "embedding as its head, right only if it was trained tied and its config was saved wrong: "
                "pass --assume-tied if that is so"
            )
        return [], {}, {}, True, False, "repair the config: the model was trained tied (--assume-tied)"
    if v == "embed-missing":
        return [h], {}, {e: h}, True, False, "store the head's matrix as the embedding and tie"
    flag_ties = report.tie_flag.value is True
    if v == "tied" and not report.reclaimable_keys and (flag_ties or report.tie_flag.value is None):
        if force:
            return [], {}, {}, True, False, "already tied; writing a normalised copy (--force)"
        return [], {}, {}, True, True, "already tied: nothing to do"
    # duplicated, tieable, or tied with other reclaimable tie-map copies
    return list(report.reclaimable_keys), {}, {}, True, False, f"drop {len(report.reclaimable_keys)} duplicate(s) and tie"


def _untie_ops(report: Report, force: bool):
    v, e, h = report.verdict, report.embed.key, report.head.key if report.head else None
    ckpt: Checkpoint = report.checkpoint
    path = report.path
    if v == "no-head":
        raise RefusedError(f"{path}: the model has no output head; there is nothing to untie")
    if v == "head-missing":
        raise RefusedError(
            f"{path}: there is no head to keep (the config unties and none is stored); "
            "`tieconv tie --assume-tied` is the other way out"
        )
    if v in ("untied", "tieable"):
        if force:
            return [], {}, {}, False, False, "already untied; writing a normalised copy (--force)"
        return [], {}, {}, False, True, "already untied: nothing to do"
    if v == "conflict":
        return [], {}, {}, False, False, "keep both matrices as stored and set the flag to untied"
    if v == "embed-missing":
        if report.tie_flag.value is False:
            raise RefusedError(f"{path}: the config unties and the embedding {e} is not stored: it is lost")
        return [], {e: h}, {}, False, False, "store the embedding as a copy of the head and untie"
    # tied or duplicated: materialise every target of the tie map the flag controls
    added = {}
    for target, source in report.tie_map.items():
        if target not in ckpt.tensors and source in ckpt.tensors:
            added[target] = source
    if h and h not in ckpt.tensors and e in ckpt.tensors:
        added[h] = e
    return [], added, {}, False, False, f"store {len(added)} tie-map target(s) as their own tensors and untie"


# ---------------------------------------------------------------- building the plan


def _config_changes(report: Report, ckpt: Checkpoint, flag: bool) -> dict[str, object]:
    config = ckpt.config
    if config is None:
        return {}
    changes: dict[str, object] = {}
    if report.tie_flag.forced:
        # T5/mT5 in transformers 5: the flag is forced; the output scaling lives in scale_decoder_outputs,
        # which 4.x derived from the flag. Keep the flag as written and pin the input's scaling explicitly.
        scale = config.get("scale_decoder_outputs")
        if not isinstance(scale, bool):
            scale = config.get("tie_word_embeddings") is not False
        changes["scale_decoder_outputs"] = scale
        return changes
    changes["tie_word_embeddings"] = flag
    if isinstance(config.get("text_config"), dict):
        changes["text_config.tie_word_embeddings"] = flag  # keep top level and text_config consistent
    return changes


def _output_files(ckpt: Checkpoint, dropped: set[str], added: dict[str, str], replaced: dict[str, str],
                  aliases: dict[str, str], fmt: str) -> list[PlannedFile]:
    by_file: dict[str, list[PlannedTensor]] = {name: [] for name in ckpt.files}
    # in each file's data order, so copies read their sources sequentially
    ordered = sorted(ckpt.tensors.values(), key=lambda t: (ckpt.files.index(t.file), t.offset or 0))
    for t in ordered:
        if t.key in dropped:
            continue
        src = ckpt.tensors[replaced.get(t.key, t.key)]
        by_file[t.file].append(PlannedTensor(t.key, src.key, src.dtype, src.shape, src.nbytes))
        for new_key, source in added.items():
            if source == t.key:
                by_file[t.file].append(PlannedTensor(new_key, t.key, t.dtype, t.shape, t.nbytes))
    # a replaced key that was not stored (embed-missing): put it where its source was
    for key, source in replaced.items():
        if key not in ckpt.tensors:
            s = ckpt.tensors[source]
            by_file[s.file].append(PlannedTensor(key, source, s.dtype, s.shape, s.nbytes))
    groups = [(name, tensors) for name, tensors in by_file.items() if tensors]
    keep_names = ckpt.layout == "hf-safetensors-sharded" and len(groups) == len(ckpt.files)
    files = []
    for i, (name, tensors) in enumerate(groups, 1):
        meta = dict(ckpt.file_metadata.get(name, {}))
        meta = {k: v for k, v in meta.items() if k not in ckpt.aliases and k not in added and k not in replaced}
        meta.setdefault("format", "pt")
        kept = {t.key for t in tensors}
        meta.update({d: k for d, k in aliases.items() if k in kept})
        if ckpt.layout in ("safetensors-file", "gguf") or ckpt.layout == "torch-file" and fmt == "torch":
            out_name = Path(name).name
        elif ckpt.layout == "torch-file":
            out_name = Path(name).stem + ".safetensors"
        elif keep_names or len(groups) > 1:
            out_name = name if keep_names else shard_name(i, len(groups))
        else:
            out_name = "model.safetensors"
        original = [t.key for t in by_file_original(ckpt, name)]
        unchanged = (
            name.endswith(".safetensors")
            and [t.key for t in tensors] == original
            and all(t.key == t.source for t in tensors)
            and meta == ckpt.file_metadata.get(name)
        )
        files.append(PlannedFile(out_name, tuple(tensors), meta, name if unchanged else None))
    return files


def by_file_original(ckpt: Checkpoint, name: str):
    return sorted((t for t in ckpt.tensors.values() if t.file == name), key=lambda t: t.offset or 0)


def _other_files(ckpt: Checkpoint) -> list[str]:
    """Small files to carry over (tokenizer, generation config...): top-level regular files inside the folder."""
    if ckpt.layout in ("safetensors-file",) or (ckpt.layout == "torch-file" and ckpt.path.is_file()):
        return []
    skip = set(ckpt.files) | {SAFETENSORS_INDEX, BIN_INDEX, "config.json"}
    out = []
    for entry in sorted(os.listdir(ckpt.root)):
        p = ckpt.root / entry
        if entry in skip or not p.is_file() or entry.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
            continue
        safe_member(ckpt.root, entry, "folder")
        out.append(entry)
    return out


def plan(action: str, src, dst, *, keep: str | None = None, assume_tied: bool = False, force: bool = False,
         embed: str | None = None, head: str | None = None, overwrite: bool = False, link: bool = False,
         format: str | None = None) -> tuple[Plan, Report]:
    """Compute what `tie` or `untie` would do, without writing anything.

    Example:
        >>> import tieconv
        >>> p, report = tieconv.plan("tie", "fixtures/llama-duplicated", "/tmp/never-written")
        >>> p.dropped, p.bytes_saved
        (['lm_head.weight'], 2048)
    """
    if keep not in (None, "embed", "head"):
        raise RefusedError(f"--keep must be 'embed' or 'head', not {keep!r}")
    if format not in (None, "torch", "safetensors", "gguf"):
        raise RefusedError(f"--format must be 'torch' or 'safetensors', not {format!r}")
    from . import hub

    named = str(src)
    src = hub.local_path(src)  # a repo id: into the cache, one weight format and the small files
    ckpt: Checkpoint = open_checkpoint(src)
    if hub.parse_repo_id(str(src)):
        ckpt.notes.append(f"{src}: the local path was used, not the Hub repo of the same name")
    coerced = coerce_flags(ckpt)  # a flag written as "false" or 1: read, and written back as a boolean
    force = force or bool(coerced)
    report = inspect_checkpoint(ckpt, embed=embed, head=head, compare=True)
    if action == "tie":
        dropped, added, replaced, flag, nothing, reason = _tie_ops(report, keep, assume_tied, force)
    elif action == "untie":
        dropped, added, replaced, flag, nothing, reason = _untie_ops(report, force)
    else:
        raise ValueError(action)
    p = Plan(action, named, str(dst), report.verdict, None, nothing, reason)
    if nothing:
        return p, report
    _check_destination(Path(dst), Path(src), overwrite)
    fmt = format or {"torch-file": "torch", "gguf": "gguf"}.get(ckpt.layout, "safetensors")
    if ckpt.layout == "gguf" and fmt != "gguf":
        raise RefusedError(f"{src}: a GGUF file is written as GGUF; --format does not apply")
    if fmt == "torch" and ckpt.layout != "torch-file":
        raise RefusedError(f"{src}: --format torch applies to single torch files only; this is {ckpt.layout}")
    p.output_format, p.link, p.overwrite = fmt, link, overwrite
    if ckpt.layout == "torch-file" and fmt == "safetensors":
        p.left_out = _training_entries(ckpt)

    aliases = {}
    if action == "tie" and report.head and ckpt.config is None:
        aliases = {k: report.embed.key for k in dropped}  # record `dropped -> kept`, as save_model does
    p.dropped, p.added, p.replaced = sorted(dropped), dict(added), dict(replaced)
    p.config_changes = _config_changes(report, ckpt, flag)
    p.warnings.extend(coerced)
    p.files = _output_files(ckpt, set(dropped), added, replaced, aliases, fmt)
    p.copied_files = _other_files(ckpt)
    p.output_layout = _output_layout(ckpt, len(p.files), fmt)
    output_total = sum(t.nbytes for f in p.files for t in f.tensors)
    p.bytes_before, p.bytes_after = report.bytes.total, output_total
    p.bytes_saved = report.bytes.total - output_total
    p.parameters_before = report.parameters.stored
    p.parameters_after = sum(_numel(t.shape) for f in p.files for t in f.tensors)
    if reason.endswith("(--force)"):
        p.output_verdict = report.verdict  # a normalised copy of a consistent checkpoint
    elif action == "tie":
        p.output_verdict = "tied"
    elif report.verdict == "conflict":
        p.output_verdict = "untied"
    elif report.tie_flag.forced:
        p.output_verdict = "duplicated"
        p.warnings.append("transformers 5 forces this config class to tie, and re-ties equal copies at load")
    else:
        p.output_verdict = "tieable"
    if action == "untie" and ckpt.config and ckpt.config.get("model_type") in ALWAYS_TIED_IN_VLLM:
        p.warnings.append(f"vLLM ties {ckpt.config.get('model_type')} models whatever the files hold: "
                          "it will ignore the stored head")
    if ckpt.layout.startswith("hf-bin"):
        p.warnings.append("the .bin input is written as safetensors")
    if p.left_out:
        p.warnings.append("written as safetensors, which holds tensors only: left out " + ", ".join(p.left_out))
    p.loader_bytes_saved = _loader_bytes(report) - _loader_bytes_after(report, p)
    return p, report


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _loader_bytes(report: Report) -> int:
    """Bytes of parameters a transformers loader allocates for this checkpoint as it stands."""
    total = report.bytes.total
    if report.tie_flag.value is not False:
        total -= report.bytes.reclaimable  # equal copies are tied at load
    elif report.verdict == "head-missing":
        total += report.embed.nbytes  # a head is allocated and filled with random values
    elif report.head and report.identical and report.bytes.reclaimable == 0 and report.head.stored:
        total += report.head.nbytes  # one storage in a .bin, two parameters once loaded untied
    return total


def _loader_bytes_after(report: Report, p: Plan) -> int:
    if p.action == "tie":
        return p.bytes_after
    if p.output_verdict == "duplicated":  # transformers re-ties equal copies
        return p.bytes_after - (report.head.nbytes if report.head else 0)
    return p.bytes_after


def _training_entries(ckpt: Checkpoint) -> list[str]:
    import torch

    obj = ckpt._pickles[ckpt.files[0]]
    if not isinstance(obj, dict):
        return []
    return sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)
                  and not (isinstance(v, dict) and any(isinstance(x, torch.Tensor) for x in v.values())))


def _output_layout(ckpt: Checkpoint, nfiles: int, fmt: str) -> str:
    if ckpt.layout in ("safetensors-file", "gguf"):
        return ckpt.layout
    if ckpt.layout == "torch-file":
        return "torch-file" if fmt == "torch" else "safetensors-file"
    return "hf-safetensors" if nfiles == 1 else "hf-safetensors-sharded"


def _check_destination(dst: Path, src: Path, overwrite: bool) -> None:
    """Refuse OUT equal to, inside, or containing IN (resolved paths), and an existing OUT without overwrite."""
    rdst, rsrc = dst.resolve(), src.resolve()
    for a, b, what in ((rdst, rsrc, "is or is inside the input"), (rsrc, rdst, "contains the input")):
        try:
            a.relative_to(b)
        except ValueError:
            continue
        raise OutputError(f"{dst}: {what}; write the output elsewhere")
    if os.path.lexists(dst) and not overwrite:
        raise OutputError(f"{dst}: already exists; choose a new output path, or pass --overwrite")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst.parent}: does not exist; create the output's parent folder first")


# ---------------------------------------------------------------- executing
