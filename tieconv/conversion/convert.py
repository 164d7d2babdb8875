"""`tie` and `untie`: carry out a plan (see `planning`) into an all-or-nothing output.

Executing a plan copies bytes in bounded chunks (kernel copies for safetensors ranges) from the
input's files into a temporary folder beside OUT, verifies the result by inspecting it, and only
then renames it into place.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..formats.checkpoint import SAFETENSORS_INDEX, Checkpoint
from .. import collector
from ..errors import OutputError, RefusedError, VerificationError
from .planning import Plan, PlannedTensor, plan
from ..inspection.report import Report, human_bytes
from ..inspection.verdicts import TABLE, Member, Verdict
from .writer import (
    OutputFolder,
    WriteEntry,
    check_output_parent,
    copy_file,
    link_or_copy,
    write_gguf,
    write_safetensors,
    write_text,
)

if TYPE_CHECKING:
    from ..progress import Bar


@dataclass
class ConversionResult:
    bytes_saved: int  # negative for untie
    files_written: list[str]
    seconds: float
    verdict: Verdict | None  # the output's verdict
    plan: Plan
    warnings: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)  # output files that are hard links to the input's
    verified: str = "none"  # "sample", "full" or "none"
    downloaded_bytes: int = 0  # fetched from the Hub to plan (headers, and the two tensors' ranges when compared)

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "nothing_to_do": p.nothing_to_do,
            "bytes_saved": self.bytes_saved,
            "files_written": self.files_written,
            "seconds": round(self.seconds, 3),
            "verdict": self.verdict,
            "bytes": {"before": p.bytes_before, "after": p.bytes_after},
            "parameters": {"before": p.parameters_before, "after": p.parameters_after},
            "loader_bytes_saved": p.loader_bytes_saved,
            "linked": self.linked,
            "verified": self.verified,
            "downloaded_bytes": self.downloaded_bytes,
            "warnings": self.warnings,
            "plan": p.to_dict(),
        }


# ---------------------------------------------------------------- deciding what to do


def preflight(p: Plan, src: Path) -> None:
    """Everything about OUT that can be checked before writing, for real runs, dry runs and nothing-to-do alike.

    Refuses OUT equal to, inside, or containing IN (resolved paths); an existing OUT without
    `--overwrite`; replacing a file by a folder or a folder by a file; a missing or unwritable parent
    folder; a name too long for the file system once the temporary suffix is added.
    """
    dst = Path(p.destination)
    rdst, rsrc = dst.resolve(), Path(src).resolve()
    for a, b, what in ((rdst, rsrc, "is or is inside the input"), (rsrc, rdst, "contains the input")):
        try:
            a.relative_to(b)
        except ValueError:
            continue
        raise OutputError(f"{dst}: {what}; write the output elsewhere")
    if os.path.lexists(dst):
        if not p.overwrite:
            raise OutputError(f"{dst}: already exists; pass --overwrite or another name")
        is_folder = dst.is_dir() and not dst.is_symlink()
        if p.output_is_file and is_folder:
            raise OutputError(f"{dst}: is a folder and OUT is a file here (IN is a file); choose another name")
        if not p.output_is_file and not is_folder and not dst.is_symlink():  # a link itself is replaced
            raise OutputError(f"{dst}: is a file (or a link) and OUT is a folder here (IN is a folder); "
                              "choose another name")
    check_output_parent(dst)


def execute(p: Plan, report: Report, verify: str = "sample") -> ConversionResult:
    """Write the plan's output all or nothing, verify it, then swap it into place."""
    if verify not in ("sample", "full", "none"):
        raise RefusedError(f"--verify must be sample, full or none, not {verify!r}")
    start = time.monotonic()
    ckpt: Checkpoint = report.checkpoint
    dst = Path(p.destination)
    linked: list[str] = []
    needed = _bytes_needed(ckpt, p)
    out_folder = OutputFolder(dst, is_file=p.output_is_file, overwrite=p.overwrite, needed_bytes=needed)
    with out_folder as tmp:
        weights = tmp / p.weights_folder if p.weights_folder else tmp
        weights.mkdir(parents=True, exist_ok=True)
        for name in p.copied_files:  # first, so the weights folder's own files are written after
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            copy_file(ckpt.path / name, tmp / name)
        if p.output_format == "torch":
            _write_torch_file(ckpt, p, weights)
        elif p.output_format == "gguf":
            from ..formats import gguf_file

            (f,) = p.files
            src = ckpt.backends[ckpt.files[0]]
            assert isinstance(src, gguf_file.GGUFFile)
            header, pieces, alignment = gguf_file.output_header(src, [(t.key, t.source) for t in f.tensors])
            write_gguf(weights / f.name, header, src.path, pieces, alignment)
        else:
            from ..progress import bar

            with bar(p.bytes_after, "writing") as progress:
                _write_safetensors_files(ckpt, p, weights, linked, progress)
        if p.output_layout == "hf-safetensors-sharded":
            write_text(weights / SAFETENSORS_INDEX, _index_text(ckpt, p))
        if ckpt.config is not None:
            write_text(weights / "config.json",
                       json.dumps(_apply_changes(ckpt.config, p.config_changes), indent=2) + "\n")
        check_path = weights / p.files[0].name if p.output_is_file else tmp
        out_report = _inspect_output(check_path, report, compare=verify != "none")
        _verify(p, report, out_report, verify)
        verdict = out_report.verdict if out_report.verdict != Verdict.UNDECIDED else p.output_verdict
        written = sorted(str(Path(d, n).relative_to(tmp)) for d, _, names in os.walk(tmp) for n in names)
    files = [str(dst)] if p.output_is_file else [str(dst / n) for n in written]
    warnings = list(p.warnings)
    if out_folder.interrupted_after_swap:
        warnings.append("interrupted after the output was complete and in place: finished")
    if p.link:
        copied = [f.name for f in p.files if f.unchanged_from and f.name not in linked]
        if linked:
            warnings.append(f"hard-linked unchanged shard(s) {', '.join(linked)}: they ARE the input's files")
        if copied:
            warnings.append(f"could not hard-link {', '.join(copied)} (another filesystem): copied")
    return ConversionResult(p.bytes_saved, files, time.monotonic() - start, verdict, p, warnings, linked, verify)


def _write_safetensors_files(ckpt: Checkpoint, p: Plan, tmp: Path, linked: list[str], progress: Bar) -> None:
    for f in p.files:
        (tmp / f.name).parent.mkdir(parents=True, exist_ok=True)  # an index may keep shards in a subfolder
        if f.unchanged_from:
            src_file = ckpt.root / f.unchanged_from
            size = ckpt.file_sizes.get(f.unchanged_from)  # a shard truncated since planning aborts the write
            if p.link and link_or_copy(src_file, tmp / f.name, size) == "linked":
                linked.append(f.name)
            elif not p.link:
                copy_file(src_file, tmp / f.name, size)
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
    total += sum((ckpt.path / n).stat().st_size for n in p.copied_files)
    return total


def _entry(ckpt: Checkpoint, t: PlannedTensor) -> WriteEntry:
    src = ckpt.tensors[t.source]
    if src.offset is not None:  # a byte range of a safetensors file: copied in the kernel, never decoded
        return WriteEntry(t.key, t.dtype, t.shape, t.nbytes, _chunks(ckpt, t.source), ckpt.root / src.file, src.offset)
    return WriteEntry(t.key, t.dtype, t.shape, t.nbytes, _chunks(ckpt, t.source))


def _index_text(ckpt: Checkpoint, p: Plan) -> str:
    """The output's index: the input's metadata with the new totals, and the weight map sorted, as
    huggingface_hub writes it (`json.dumps(..., indent=2)`).

    The weight map's lines are put together here from json's C string encoder: with an indent, json.dumps
    encodes in Python, value by value, which cost half a second for a 90k-tensor index.
    """
    old = ckpt.index_metadata
    meta = {**old, "total_size": p.bytes_after}
    if "total_parameters" in old:
        meta["total_parameters"] = p.parameters_after
    weight_map = sorted((t.key, f.name) for f in p.files for t in f.tensors)
    if not weight_map:
        return json.dumps({"metadata": meta, "weight_map": {}}, indent=2) + "\n"
    encode = json.encoder.encode_basestring_ascii  # what json.dumps uses with its default ensure_ascii
    lines = ",\n".join([f"    {encode(key)}: {encode(name)}" for key, name in weight_map])
    metadata = json.dumps({"metadata": meta}, indent=2)[: -len("\n}")]
    return f'{metadata},\n  "weight_map": {{\n{lines}\n  }}\n}}\n'


def _chunks(ckpt: Checkpoint, key: str) -> Callable[[], Iterator[bytes | bytearray]]:
    return lambda: ckpt.iter_bytes(key)


def _apply_changes(config: dict[str, Any], changes: dict[str, object]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(config))
    for dotted, value in changes.items():
        target = out
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return out


SAMPLE_BYTES = 4096


def _inspect_output(path: Path, report: Report, compare: bool) -> Report:
    """The written output, read with the input's names where the output still stores them.

    The names matter for files without a config (an unusual key the user named); a key the
    conversion dropped (FSMT's decoder embedding, a tie target) is left to the output's own rules.
    """
    from ..formats.checkpoint import open_checkpoint
    from ..inspection.inspector import inspect_checkpoint

    out = open_checkpoint(path)
    stored = set(out.tensors) | set(out.aliases)
    embed = report.embed.key if report.embed and report.embed.key in stored else None
    head = report.head.key if report.head and report.head.key in stored else None
    return inspect_checkpoint(out, embed=embed, head=head, compare=compare)


def _verify(p: Plan, report: Report, out: Report, verify: str) -> None:
    """The output against the input as a loader sees both (`tieconv diff`), not against the plan.

    A wrong plan cannot verify: the independent check is that a loader builds from OUT exactly what it
    builds from IN, except the change the plan asks for (`--keep` replacing one matrix's values, the
    flag fields). The plan's own promises (the output's verdict, its keys) are checked too. `verify`
    only chooses how many bytes are compared: every byte, three 4 KB samples per tensor, or none.
    """
    from ..inspection.equivalence import compare_reports

    def fail(why: str) -> NoReturn:
        raise VerificationError(f"{p.destination}: verification failed: {why}; nothing was written")

    if out.verdict != p.output_verdict and not (verify == "none" and out.verdict == Verdict.UNDECIDED):
        fail(f"the output inspects as {out.verdict}, expected {p.output_verdict}")
    planned = {t.key for f in p.files for t in f.tensors}
    if planned != set(out.checkpoint.tensors):
        fail("the output holds different keys than planned")
    sample = {"full": None, "sample": SAMPLE_BYTES, "none": 0}[verify]
    if p.output_is_file:
        report = _the_file_alone(report)
    found = compare_reports(report, out, expected_values=_expected_values(p, report),
                            expected_config=dict(p.config_changes), sample_bytes=sample)
    if not found.equivalent:
        fail(f"a loader would build a different model from it than from the input: {found.headline()}")


def _the_file_alone(report: Report) -> Report:
    """IN as a loader reads its file alone: a file OUT carries none of the files beside IN (Meta's
    params.json), so it is compared with the file, not with the file and its neighbours."""
    if report.checkpoint.config_file is None:
        return report
    import copy
    import dataclasses

    ckpt = copy.copy(report.checkpoint)
    ckpt.config_file = None
    return dataclasses.replace(report, checkpoint=ckpt)


def _expected_values(p: Plan, report: Report) -> dict[str, str]:
    """Parameter -> the input parameter whose values the output is meant to hold instead of its own."""
    expected = {key: source for key, source in p.replaced.items() if key in report.checkpoint.tensors}
    head, embed = (report.head.key if report.head else None), report.embed.key  # type: ignore[union-attr]
    keeps = TABLE[report.verdict].tie.keep
    if p.action == "tie" and head and embed not in expected and keeps in (Member.EMBED, Member.CHOSEN):
        # the verdict's row keeps the embedding's matrix (or --keep chose it): the head, different or
        # random before, takes the embedding's values
        expected[head] = embed
    return expected


def _write_torch_file(ckpt: Checkpoint, p: Plan, folder: Path) -> None:
    """A torch (zip) file: the planned tensors, and every other entry of a torch input with its value.

    Keys that shared one storage in the input keep sharing it (torch.save stores it once); a key that
    takes another's values (untie) gets its own copy, or torch.save would store one shared storage.
    """
    import torch

    (f,) = p.files
    state_dict, seen = {}, set()
    for t in f.tensors:
        if ckpt.layout == "torch-file":
            storage, tensor = ckpt.tensors[t.source].storage, ckpt.load_tensor(t.source)
        else:
            storage, tensor = t.source, ckpt.load_tensor(t.source)  # type: ignore[assignment]
        if t.key != t.source or (p.action == "untie" and storage in seen):
            tensor = tensor.clone()
        seen.add(storage)
        state_dict[t.key] = tensor
    obj: object = state_dict
    original = ckpt.torch_object()
    if isinstance(original, dict):
        obj = _rebuild_wrapper(original, state_dict, set(p.left_out))
    with open(folder / f.name, "xb") as out:  # made durable by OutputFolder (fsync_tree) with the rest
        torch.save(obj, out)


def _rebuild_wrapper(original: dict[Any, Any], state_dict: dict[str, Any], left_out: set[str]) -> dict[Any, Any]:
    """The input's dict with its state dict replaced, every other entry kept in order (unless left out)."""
    import torch

    from ..formats.checkpoint import NESTED_STATE_DICT_KEYS

    for key in NESTED_STATE_DICT_KEYS:
        inner = original.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()) \
                and not any(isinstance(v, torch.Tensor) for v in original.values()):
            return {k: (state_dict if k == key else v) for k, v in original.items() if str(k) not in left_out}
    out = {}
    for k, v in original.items():  # a top-level state dict: tensors in their new form, other entries as they were
        if isinstance(v, torch.Tensor):
            if k in state_dict:
                out[k] = state_dict[k]
        elif str(k) not in left_out:
            out[k] = v
    for k, v in state_dict.items():  # added keys
        out.setdefault(k, v)
    return out


# ---------------------------------------------------------------- public entry points


def tie(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep: str | None = None,
        assume_tied: bool = False, force: bool = False, dry_run: bool = False, embed: str | None = None,
        head: str | None = None, overwrite: bool = False, link: bool = False, verify: str = "sample",
        drop_optimizer: bool = False, drop_other_weights: bool = False) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head and embedding are stored once and whose config ties them.

    OUT mirrors IN: a folder for a folder; for a file, OUT's suffix picks the format (`.safetensors`,
    `.pt`/`.pth`/`.bin`/`.ckpt` for a torch file, `.gguf` for a GGUF input).

    Args:
        keep: "embed" or "head": which matrix survives when the two differ (`untied`, `conflict`).
        assume_tied: repair a `head-missing` checkpoint's config (right only if it was trained tied).
        force: write a normalised copy even when there is nothing to do.
        dry_run: plan only; write nothing.
        overwrite: replace an existing `dst`, only once the new output is complete.
        link: hard-link unchanged shards instead of copying them (they then ARE the input's files).
        verify: "sample" (default: headers and sampled bytes), "full" (every byte) or "none".
        drop_optimizer: leave a training checkpoint's optimizer state out (it no longer matches).
        drop_other_weights: leave out weight files of another format than the one converted.

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "tied")
        >>> result = tieconv.tie("fixtures/llama-duplicated", out)
        >>> print(result.verdict, result.bytes_saved)
        tied 2048
    """
    return _run("tie", src, dst, dry_run=dry_run, verify=verify, keep=keep, assume_tied=assume_tied, force=force,
                embed=embed, head=head, overwrite=overwrite, link=link, drop_optimizer=drop_optimizer,
                drop_other_weights=drop_other_weights)


def untie(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, force: bool = False, dry_run: bool = False,
          embed: str | None = None, head: str | None = None, overwrite: bool = False, link: bool = False,
          verify: str = "sample", drop_optimizer: bool = False, drop_other_weights: bool = False) -> ConversionResult:
    """Write a copy of `src` at `dst` whose head is its own tensor and whose config unties it.

    Every target of the architecture's tie map is materialised (BART's encoder and decoder
    embeddings too), so transformers loads no random tensor. Options as for `tie`.

    Example:
        >>> import tieconv, tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "untied")
        >>> result = tieconv.untie("fixtures/llama-tied", out)
        >>> print(result.verdict, result.bytes_saved)
        tieable -2048
    """
    return _run("untie", src, dst, dry_run=dry_run, verify=verify, force=force, embed=embed, head=head,
                overwrite=overwrite, link=link, drop_optimizer=drop_optimizer, drop_other_weights=drop_other_weights)


def _run(action: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, dry_run: bool, verify: str,
         **options: Any) -> ConversionResult:
    with collector.paused():
        return _convert(action, src, dst, dry_run=dry_run, verify=verify, **options)


def _convert(action: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, dry_run: bool, verify: str,
             **options: Any) -> ConversionResult:
    start = time.monotonic()
    p, report = plan(action, src, dst, **options)  # a Hub repo: from its headers, nothing downloaded
    planned_from_hub = report.downloaded_bytes
    preflight(p, report.checkpoint.path)  # OUT is checked the same way whether or not anything is written
    if p.nothing_to_do or dry_run:
        return ConversionResult(0 if p.nothing_to_do else p.bytes_saved, [], time.monotonic() - start,
                                report.verdict if p.nothing_to_do else p.output_verdict, p, list(p.warnings),
                                downloaded_bytes=planned_from_hub)
    if report.layout == "hub":
        p, report = _download_and_plan(action, src, dst, options)
    result = execute(p, report, verify=verify)
    result.downloaded_bytes = planned_from_hub
    result.seconds = time.monotonic() - start
    return result


def _download_and_plan(action: str, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                       options: dict[str, Any]) -> tuple[Plan, Report]:
    """A Hub input about to be converted: download the files the conversion needs into the Hugging Face
    cache, and plan again from them (the bytes are copied from local files, not streamed over HTTP)."""
    from ..formats import hub

    p, report = plan(action, hub.local_path(src), dst, **options)
    p.source = str(src)  # the repo the user named, not the cache folder
    return p, report


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
    loader = ("a loader allocates the same memory" if p.loader_bytes_saved == 0 else
              f"a loader allocates {human_bytes(abs(p.loader_bytes_saved))} "
              f"{'less' if p.loader_bytes_saved > 0 else 'more'}")
    lines.append(f"  on disk: {human_bytes(p.bytes_before)} -> {human_bytes(p.bytes_after)}; parameters stored: "
                 f"{p.parameters_before:,} -> {p.parameters_after:,}; {loader}")
    if result.files_written:
        n = len(result.files_written)
        lines.append(f"  wrote {n} file{'s' if n != 1 else ''} in {result.seconds:.2f} s (verified: "
                     f"{result.verified}); {verb} {human_bytes(abs(result.bytes_saved))} ({abs(result.bytes_saved)} bytes)")
    else:
        n = len(p.files)
        lines.append(f"  dry run: would write {n} weight file{'s' if n != 1 else ''}; "
                     f"{'save' if p.bytes_saved >= 0 else 'add'} {human_bytes(abs(p.bytes_saved))}")
    if result.downloaded_bytes:
        lines.append(f"  planned from the Hub: {human_bytes(result.downloaded_bytes)} fetched (headers and, where "
                     "the verdict needed them, the two tensors' byte ranges)")
    if p.runtimes:
        lines.append(f"  runtimes: {p.runtimes}")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)
