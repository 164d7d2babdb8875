"""`tie` and `untie`: carry out a plan (see `planning`) into an all-or-nothing output.

Executing a plan copies bytes in bounded chunks (kernel copies for safetensors ranges) from the
input's files into a temporary folder beside OUT, verifies the result by inspecting it, and only
then renames it into place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import SAFETENSORS_INDEX, Checkpoint
from .errors import RefusedError, VerificationError
from .inspection import inspect
from .planning import Plan, PlannedTensor, plan
from .report import Report, human_bytes
from .writer import OutputFolder, WriteEntry, copy_file, link_or_copy, write_safetensors, write_text


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
    p, report = plan(action, src, dst, download=False, **options)  # a Hub repo: from its headers
    if not (p.nothing_to_do or dry_run) and report.layout == "hub":
        p, report = plan(action, src, dst, **options)  # now download what the plan needs, and plan from the files
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
