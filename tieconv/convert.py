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
from .writer import OutputFolder, WriteEntry, copy_file, shard_name, write_safetensors, write_text

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
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["files"] = [
            {"name": f.name, "metadata": f.metadata, "tensors": [t.key for t in f.tensors]} for f in self.files
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

    def to_dict(self) -> dict:
        return {
            "bytes_saved": self.bytes_saved,
            "files_written": self.files_written,
            "seconds": round(self.seconds, 3),
            "verdict": self.verdict,
            "warnings": self.warnings,
            "plan": self.plan.to_dict(),
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
                  aliases: dict[str, str]) -> list[PlannedFile]:
    by_file: dict[str, list[PlannedTensor]] = {name: [] for name in ckpt.files}
    for key, t in ckpt.tensors.items():
        if key in dropped:
            continue
        src = ckpt.tensors[replaced.get(key, key)]
        by_file[t.file].append(PlannedTensor(key, src.key, src.dtype, src.shape, src.nbytes))
        for new_key, source in added.items():
            if source == key:
                by_file[t.file].append(PlannedTensor(new_key, key, t.dtype, t.shape, t.nbytes))
    # a replaced key that was not stored (embed-missing): put it where its source was
    for key, source in replaced.items():
        if key not in ckpt.tensors:
            s = ckpt.tensors[source]
            by_file[s.file].append(PlannedTensor(key, source, s.dtype, s.shape, s.nbytes))
    groups = [(name, tensors) for name, tensors in by_file.items() if tensors]
    single = ckpt.layout in ("hf-safetensors", "hf-bin", "safetensors-file", "torch-file") or len(groups) == 1
    files = []
    for i, (name, tensors) in enumerate(groups, 1):
        meta = dict(ckpt.file_metadata.get(name, {}))
        meta = {k: v for k, v in meta.items() if k not in ckpt.aliases and k not in added and k not in replaced}
        meta.setdefault("format", "pt")
        kept = {t.key for t in tensors}
        meta.update({d: k for d, k in aliases.items() if k in kept})
        if ckpt.layout == "safetensors-file":
            out_name = Path(name).name
        elif ckpt.layout == "torch-file":
            out_name = name
        else:
            out_name = "model.safetensors" if single else shard_name(i, len(groups))
        files.append(PlannedFile(out_name, tuple(tensors), meta))
    return files


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
         embed: str | None = None, head: str | None = None) -> tuple[Plan, Report]:
    """Compute what `tie` or `untie` would do, without writing anything."""
    if keep not in (None, "embed", "head"):
        raise RefusedError(f"--keep must be 'embed' or 'head', not {keep!r}")
    report = inspect(src, embed=embed, head=head, compare=True)
    ckpt: Checkpoint = report.checkpoint
    if action == "tie":
        dropped, added, replaced, flag, nothing, reason = _tie_ops(report, keep, assume_tied, force)
    elif action == "untie":
        dropped, added, replaced, flag, nothing, reason = _untie_ops(report, force)
    else:
        raise ValueError(action)
    p = Plan(action, str(src), str(dst), report.verdict, None, nothing, reason)
    if nothing:
        return p, report
    _check_destination(Path(dst), Path(src))

    aliases = {}
    if action == "tie" and report.head and ckpt.config is None:
        aliases = {k: report.embed.key for k in dropped}  # record `dropped -> kept`, as save_model does
    p.dropped, p.added, p.replaced = sorted(dropped), dict(added), dict(replaced)
    p.config_changes = _config_changes(report, ckpt, flag)
    p.files = _output_files(ckpt, set(dropped), added, replaced, aliases)
    p.copied_files = _other_files(ckpt)
    p.output_layout = _output_layout(ckpt, len(p.files))
    output_total = sum(t.nbytes for f in p.files for t in f.tensors)
    p.bytes_saved = report.bytes.total - output_total
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
    return p, report


def _output_layout(ckpt: Checkpoint, nfiles: int) -> str:
    if ckpt.layout in ("safetensors-file", "torch-file"):
        return ckpt.layout
    return "hf-safetensors" if nfiles == 1 else "hf-safetensors-sharded"


def _check_destination(dst: Path, src: Path) -> None:
    if os.path.lexists(dst):
        raise OutputError(f"{dst}: already exists; choose a new output path or remove it")
    if not dst.parent.is_dir():
        raise OutputError(f"{dst.parent}: does not exist; create the output's parent folder first")
    try:
        dst.resolve().relative_to(src.resolve())
        if src.is_dir():
            raise OutputError(f"{dst}: is inside the input folder; write the output elsewhere")
    except ValueError:
        pass


# ---------------------------------------------------------------- executing


def execute(p: Plan, report: Report) -> ConversionResult:
    """Write the plan's output all or nothing and verify it by inspecting it."""
    start = time.monotonic()
    ckpt: Checkpoint = report.checkpoint
    dst = Path(p.destination)
    is_file = p.output_layout in ("safetensors-file",) or (p.output_layout == "torch-file" and ckpt.path.is_file())
    written: list[str] = []
    with OutputFolder(dst, is_file=is_file) as tmp:
        if p.output_layout == "torch-file":
            _write_torch_files(ckpt, p, tmp)
        else:
            for f in p.files:
                entries = [WriteEntry(t.key, t.dtype, t.shape, t.nbytes, _chunks(ckpt, t.source)) for t in f.tensors]
                write_safetensors(tmp / f.name, entries, f.metadata)
        if p.output_layout == "hf-safetensors-sharded":
            weight_map = {t.key: f.name for f in p.files for t in f.tensors}
            total = sum(t.nbytes for f in p.files for t in f.tensors)
            write_text(tmp / SAFETENSORS_INDEX, json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        if ckpt.config is not None:
            write_text(tmp / "config.json", json.dumps(_apply_changes(ckpt.config, p.config_changes), indent=2) + "\n")
        for name in p.copied_files:
            copy_file(ckpt.root / name, tmp / name)
        written = sorted(os.listdir(tmp))
        check_path = tmp / written[0] if is_file else tmp
        out_report = inspect(check_path, embed=report.embed.key, head=report.head.key if report.head else None)
        _verify(p, out_report)
    files = [str(dst)] if is_file else [str(dst / n) for n in written]
    return ConversionResult(p.bytes_saved, files, time.monotonic() - start, out_report.verdict, p, list(p.warnings))


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


def _verify(p: Plan, out: Report) -> None:
    if out.verdict != p.output_verdict:
        raise VerificationError(
            f"{p.destination}: the output inspects as {out.verdict}, expected {p.output_verdict}; nothing was written"
        )
    expected = {t.key for f in p.files for t in f.tensors}
    got = set(out.checkpoint.tensors)
    if expected != got:
        raise VerificationError(f"{p.destination}: the output holds different keys than planned; nothing was written")


def _write_torch_files(ckpt: Checkpoint, p: Plan, tmp: Path) -> None:
    """torch-file in, torch-file out: the pickle is rewritten (plain tensors only) with the same wrapper."""
    import torch

    from .checkpoint import NESTED_STATE_DICT_KEYS, load_pickle

    (f,) = p.files
    src = ckpt.root / ckpt.files[0]
    obj = load_pickle(src)
    # a key that takes another's values gets its own copy, or torch.save would store one shared storage
    state_dict = {t.key: ckpt._torch[t.source] if t.key == t.source else ckpt._torch[t.source].clone()
                  for t in f.tensors}
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
        dry_run: bool = False, embed: str | None = None, head: str | None = None) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head and embedding are stored once and whose config ties them.

    Args:
        keep: "embed" or "head": which matrix survives when the two differ (`untied`, `conflict`).
        assume_tied: repair a `head-missing` checkpoint's config (right only if it was trained tied).
        force: write a normalised copy even when there is nothing to do.
        dry_run: plan only; write nothing.

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "tied")
        >>> result = tieconv.tie("fixtures/llama-duplicated", out)
        >>> result.verdict, result.bytes_saved
        ('tied', 2048)
    """
    return _run("tie", src, dst, keep=keep, assume_tied=assume_tied, force=force, dry_run=dry_run,
                embed=embed, head=head)


def untie(src, dst, *, force: bool = False, dry_run: bool = False, embed: str | None = None,
          head: str | None = None) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head is its own tensor and whose config unties it.

    Every target of the architecture's tie map is materialised (BART's encoder and decoder
    embeddings too), so transformers loads no random tensor.

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "untied")
        >>> result = tieconv.untie("fixtures/llama-tied", out)
        >>> result.verdict, result.bytes_saved
        ('tieable', -2048)
    """
    return _run("untie", src, dst, force=force, dry_run=dry_run, embed=embed, head=head)


def _run(action, src, dst, *, dry_run, **options) -> ConversionResult:
    start = time.monotonic()
    p, report = plan(action, src, dst, **options)
    if p.nothing_to_do or dry_run:
        return ConversionResult(0 if p.nothing_to_do else p.bytes_saved, [], time.monotonic() - start,
                                report.verdict if p.nothing_to_do else p.output_verdict, p, list(p.warnings))
    result = execute(p, report)
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
    if result.files_written:
        lines.append(f"  wrote {len(result.files_written)} file(s) in {result.seconds:.2f} s; "
                     f"{verb} {human_bytes(abs(result.bytes_saved))} ({abs(result.bytes_saved)} bytes)")
    else:
        lines.append(f"  dry run: would write {len(p.files)} weight file(s); "
                     f"{'save' if p.bytes_saved >= 0 else 'add'} {human_bytes(abs(p.bytes_saved))}")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)
