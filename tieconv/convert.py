"""`tie` and `untie`: plan as plain data, then stream the plan into an all-or-nothing output.

The plan (`Plan`) says which keys each output file holds and where each one's bytes
come from, which keys are dropped or added, and what changes in the config; it is
what `--dry-run` and `--json` print.  Executing it copies bytes in bounded chunks
from the input's files into a temporary folder beside OUT, verifies the result by
inspecting it, and only then renames it into place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import BIN_INDEX, SAFETENSORS_INDEX, Checkpoint, safe_member
from .errors import OutputError, RefusedError, VerificationError
from .inspection import inspect
from .report import Report, human_bytes
from .writer import OutputFolder, WriteEntry, copy_file, link_or_copy, shard_name, write_safetensors, write_text

# runtimes that tie these families whatever the files hold (vLLM hard-codes it)
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


@dataclass
class ConversionResult:
    bytes_saved: int  # negative for untie
    files_written: list[str]
    seconds: float
    verdict: str | None  # the output's verdict
    plan: Plan
    warnings: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)  # output files that are hard links to the input's
    verified: str = "none"  # "sample", "full" or "none"

    def to_dict(self) -> dict:
        p = self.plan
        return {
            "bytes_saved": self.bytes_saved,
            "files_written": self.files_written,
            "seconds": round(self.seconds, 3),
            "verdict": self.verdict,
            "bytes": {"before": p.bytes_before, "after": p.bytes_after},
            "parameters": {"before": p.parameters_before, "after": p.parameters_after},
            "loader_bytes_saved": p.loader_bytes_saved,
            "linked": self.linked,
            "verified": self.verified,
            "warnings": self.warnings,
            "plan": p.to_dict(),
        }


# ---------------------------------------------------------------- deciding what to do


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
    if hub.is_repo_id(src):
        repo, revision = hub.parse_repo_id(named)
        src = hub.download(repo, revision)  # into the cache: one weight format and the small files
    report = inspect(src, embed=embed, head=head, compare=True)
    ckpt: Checkpoint = report.checkpoint
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


def execute(p: Plan, report: Report, verify: str = "sample") -> ConversionResult:
    """Write the plan's output all or nothing, verify it, then rename it into place."""
    if verify not in ("sample", "full", "none"):
        raise RefusedError(f"--verify must be sample, full or none, not {verify!r}")
    start = time.monotonic()
    ckpt: Checkpoint = report.checkpoint
    dst = Path(p.destination)
    is_file = ckpt.path.is_file()
    linked: list[str] = []
    needed = _bytes_needed(ckpt, p)
    with OutputFolder(dst, is_file=is_file, overwrite=p.overwrite, needed_bytes=needed) as tmp:
        if p.output_format == "torch":
            _write_torch_files(ckpt, p, tmp)
        elif p.output_format == "gguf":
            from . import gguf_file

            (f,) = p.files
            gguf_file.write(ckpt.root / ckpt.files[0], tmp / f.name, [(t.key, t.source) for t in f.tensors])
        else:
            from .progress import bar

            with bar(p.bytes_after, "writing") as progress:
                _write_safetensors_files(ckpt, p, tmp, linked, progress)
        if p.output_layout == "hf-safetensors-sharded":
            write_text(tmp / SAFETENSORS_INDEX, _index_text(ckpt, p))
        if ckpt.config is not None:
            write_text(tmp / "config.json", json.dumps(_apply_changes(ckpt.config, p.config_changes), indent=2) + "\n")
        for name in p.copied_files:
            copy_file(ckpt.root / name, tmp / name)
        written = sorted(os.listdir(tmp))
        if verify != "none":
            check_path = tmp / written[0] if is_file else tmp
            out_report = inspect(check_path, embed=report.embed.key, head=report.head.key if report.head else None)
            _verify(p, ckpt, out_report, full=verify == "full")
            verdict = out_report.verdict
        else:
            verdict = p.output_verdict
    files = [str(dst)] if is_file else [str(dst / n) for n in written]
    warnings = list(p.warnings)
    if p.link:
        copied = [f.name for f in p.files if f.unchanged_from and f.name not in linked]
        if linked:
            warnings.append(f"hard-linked unchanged shard(s) {', '.join(linked)}: they ARE the input's files")
        if copied:
            warnings.append(f"could not hard-link {', '.join(copied)} (another filesystem): copied")
    return ConversionResult(p.bytes_saved, files, time.monotonic() - start, verdict, p, warnings, linked, verify)


def _write_safetensors_files(ckpt: Checkpoint, p: Plan, tmp: Path, linked: list[str], progress) -> None:
    for f in p.files:
        if f.unchanged_from:
            src_file = ckpt.root / f.unchanged_from
            if p.link and link_or_copy(src_file, tmp / f.name) == "linked":
                linked.append(f.name)
            elif not p.link:
                copy_file(src_file, tmp / f.name)
        else:
            write_safetensors(tmp / f.name, [_entry(ckpt, t) for t in f.tensors], f.metadata)
        progress.update(sum(t.nbytes for t in f.tensors))


def _bytes_needed(ckpt: Checkpoint, p: Plan) -> int:
    """Bytes the output takes on the output's filesystem (hard-linked shards take none)."""
    total = 0
    for f in p.files:
        if p.link and f.unchanged_from:
            continue
        total += sum(t.nbytes for t in f.tensors) + 64 * 1024  # headers
    total += sum((ckpt.root / n).stat().st_size for n in p.copied_files)
    return total


def _entry(ckpt: Checkpoint, t: PlannedTensor) -> WriteEntry:
    src = ckpt.tensors[t.source]
    if src.offset is not None:  # a byte range of a safetensors file: copied in the kernel, never decoded
        return WriteEntry(t.key, t.dtype, t.shape, t.nbytes, _chunks(ckpt, t.source), ckpt.root / src.file, src.offset)
    return WriteEntry(t.key, t.dtype, t.shape, t.nbytes, _chunks(ckpt, t.source))


def _index_text(ckpt: Checkpoint, p: Plan) -> str:
    from .checkpoint import read_json

    old = {}
    if (ckpt.root / SAFETENSORS_INDEX).is_file():
        doc = read_json(ckpt.root / SAFETENSORS_INDEX, "index")
        old = dict(doc.get("metadata") or {}) if isinstance(doc.get("metadata"), dict) else {}
    meta = {**old, "total_size": p.bytes_after}
    if "total_parameters" in old:
        meta["total_parameters"] = p.parameters_after
    weight_map = {t.key: f.name for f in p.files for t in f.tensors}
    return json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"


def _chunks(ckpt: Checkpoint, key: str):
    return lambda: ckpt.iter_bytes(key)


def _apply_changes(config: dict, changes: dict[str, object]) -> dict:
    out = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        target = out
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return out


SAMPLE_BYTES = 4096


def _verify(p: Plan, ckpt: Checkpoint, out: Report, full: bool) -> None:
    """Headers, keys, dtypes, shapes and sizes against the plan; bytes sampled (or all); the verdict."""

    def fail(why: str):
        raise VerificationError(f"{p.destination}: verification failed: {why}; nothing was written")

    if out.verdict != p.output_verdict:
        fail(f"the output inspects as {out.verdict}, expected {p.output_verdict}")
    written = out.checkpoint
    planned = {t.key: t for f in p.files for t in f.tensors}
    if set(planned) != set(written.tensors):
        fail("the output holds different keys than planned")
    for key, t in planned.items():
        w = written.tensors[key]
        if (w.dtype, tuple(w.shape), w.nbytes) != (t.dtype, tuple(t.shape), t.nbytes):
            fail(f"{key} is {w.dtype} {list(w.shape)} ({w.nbytes} bytes), planned {t.dtype} {list(t.shape)}")
        if full:
            for a, b in zip(written.iter_bytes(key), ckpt.iter_bytes(t.source)):
                if a != b:
                    fail(f"the bytes of {key} differ from {t.source}")
        else:
            for offset in {0, max(0, t.nbytes // 2 - SAMPLE_BYTES // 2), max(0, t.nbytes - SAMPLE_BYTES)}:
                if written.read_range(key, offset, SAMPLE_BYTES) != ckpt.read_range(t.source, offset, SAMPLE_BYTES):
                    fail(f"the bytes of {key} differ from {t.source} at byte {offset}")


def _write_torch_files(ckpt: Checkpoint, p: Plan, tmp: Path) -> None:
    """torch-file in, torch-file out: the pickle is rewritten (plain tensors only) with the same wrapper."""
    import torch

    from .checkpoint import NESTED_STATE_DICT_KEYS

    (f,) = p.files
    obj = ckpt._pickles[ckpt.files[0]]
    # untie: a key that takes another's values, or shares another's storage, gets its own copy,
    # or torch.save would store one shared storage again
    state_dict, seen = {}, set()
    for t in f.tensors:
        storage = ckpt.tensors[t.source].storage
        tensor = ckpt._torch[t.source]
        if p.action == "untie" and (t.key != t.source or storage in seen):
            tensor = tensor.clone()
        seen.add(storage)
        state_dict[t.key] = tensor
    if isinstance(obj, dict):
        for key in NESTED_STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = {**obj, key: state_dict}
                break
        else:
            obj = state_dict
    with open(tmp / f.name, "xb") as out:
        torch.save(obj, out)
        out.flush()
        os.fsync(out.fileno())


# ---------------------------------------------------------------- public entry points


def tie(src, dst, *, keep: str | None = None, assume_tied: bool = False, force: bool = False,
        dry_run: bool = False, embed: str | None = None, head: str | None = None, overwrite: bool = False,
        link: bool = False, verify: str = "sample", format: str | None = None) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head and embedding are stored once and whose config ties them.

    Args:
        keep: "embed" or "head": which matrix survives when the two differ (`untied`, `conflict`).
        assume_tied: repair a `head-missing` checkpoint's config (right only if it was trained tied).
        force: write a normalised copy even when there is nothing to do.
        dry_run: plan only; write nothing.
        overwrite: replace an existing `dst`, only once the new output is complete.
        link: hard-link unchanged shards instead of copying them (they then ARE the input's files).
        verify: "sample" (default: headers and sampled bytes), "full" (every byte) or "none".
        format: for a single torch file, "torch" (default) or "safetensors".

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "tied")
        >>> result = tieconv.tie("fixtures/llama-duplicated", out)
        >>> result.verdict, result.bytes_saved
        ('tied', 2048)
    """
    return _run("tie", src, dst, dry_run=dry_run, verify=verify, keep=keep, assume_tied=assume_tied, force=force,
                embed=embed, head=head, overwrite=overwrite, link=link, format=format)


def untie(src, dst, *, force: bool = False, dry_run: bool = False, embed: str | None = None,
          head: str | None = None, overwrite: bool = False, link: bool = False, verify: str = "sample",
          format: str | None = None) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head is its own tensor and whose config unties it.

    Every target of the architecture's tie map is materialised (BART's encoder and decoder
    embeddings too), so transformers loads no random tensor. Options as for `tie`.

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "untied")
        >>> result = tieconv.untie("fixtures/llama-tied", out)
        >>> result.verdict, result.bytes_saved
        ('tieable', -2048)
    """
    return _run("untie", src, dst, dry_run=dry_run, verify=verify, force=force, embed=embed, head=head,
                overwrite=overwrite, link=link, format=format)


def _run(action, src, dst, *, dry_run, verify, **options) -> ConversionResult:
    start = time.monotonic()
    p, report = plan(action, src, dst, **options)
    if p.nothing_to_do or dry_run:
        return ConversionResult(0 if p.nothing_to_do else p.bytes_saved, [], time.monotonic() - start,
                                report.verdict if p.nothing_to_do else p.output_verdict, p, list(p.warnings))
    result = execute(p, report, verify=verify)
    result.seconds = time.monotonic() - start
    return result


def summary(result: ConversionResult) -> str:
    p = result.plan
    if p.nothing_to_do:
        return f"{p.source}: {p.reason} (verdict {p.input_verdict}); nothing written"
    lines = [f"{p.action}: {p.source} ({p.input_verdict}) -> {p.destination} ({p.output_verdict})", f"  {p.reason}"]
    if p.dropped:
        lines.append(f"  dropped: {', '.join(p.dropped)}")
    if p.added:
        lines.append("  added: " + ", ".join(f"{k} (copy of {v})" for k, v in p.added.items()))
    if p.replaced:
        lines.append("  replaced: " + ", ".join(f"{k} (values of {v})" for k, v in p.replaced.items()))
    if p.config_changes:
        lines.append("  config: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in p.config_changes.items()))
    verb = "saved" if result.bytes_saved >= 0 else "added"
    lines.append(f"  on disk: {human_bytes(p.bytes_before)} -> {human_bytes(p.bytes_after)}; parameters stored: "
                 f"{p.parameters_before:,} -> {p.parameters_after:,}; a loader allocates "
                 f"{human_bytes(abs(p.loader_bytes_saved))} {'less' if p.loader_bytes_saved >= 0 else 'more'}")
    if result.files_written:
        lines.append(f"  wrote {len(result.files_written)} file(s) in {result.seconds:.2f} s (verified: "
                     f"{result.verified}); {verb} {human_bytes(abs(result.bytes_saved))} ({abs(result.bytes_saved)} bytes)")
    else:
        lines.append(f"  dry run: would write {len(p.files)} weight file(s); "
                     f"{'save' if p.bytes_saved >= 0 else 'add'} {human_bytes(abs(p.bytes_saved))}")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)
