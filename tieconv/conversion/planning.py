"""Planning `tie` and `untie`: what a conversion will do, computed as plain data before anything is written.

`plan()` inspects the input, decides per verdict what to drop, add or replace and what changes in
the config, and lays the output out file by file (`Plan`): which keys each file holds and where
each one's bytes come from. `--dry-run` and `--json` print it; `convert.execute` carries it out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from ..formats.checkpoint import BIN_INDEX, SAFETENSORS_INDEX, Checkpoint, open_checkpoint, safe_member
from ..errors import OutputError, RefusedError
from ..inspection.inspector import coerce_flags, inspect, inspect_checkpoint
from ..inspection.report import Report, TensorInfo
from ..inspection.verdicts import TABLE, Done, Drop, Member, Step, Store, Verdict
from .writer import shard_name

class PlannedTensor(NamedTuple):  # a tuple, not a dataclass: a 90k-tensor index plans 90k of them
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
    input_verdict: Verdict
    output_verdict: Verdict | None  # None when there is nothing to do
    nothing_to_do: bool
    reason: str
    dropped: list[str] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)  # new key -> the key its values come from
    replaced: dict[str, str] = field(default_factory=dict)  # key whose values now come from another key
    separated: list[str] = field(default_factory=list)  # keys that shared their source's storage, now their own
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
    output_format: str = "safetensors"  # "safetensors", "torch" or "gguf": what OUT's name asks for
    output_is_file: bool = False  # OUT is a file exactly when IN is
    weights_folder: str = ""  # where the weights and config.json live inside OUT (sentence-transformers: a subfolder)
    overwrite: bool = False
    left_out: dict[str, str] = field(default_factory=dict)  # what is not carried into OUT -> why
    link: bool = False
    warnings: list[str] = field(default_factory=list)
    runtimes: str = ""  # which runtimes disagree about the head today, and whether they agree after

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["files"] = [
            {"name": f.name, "metadata": f.metadata, "tensors": [t.key for t in f.tensors],
             "unchanged_from": f.unchanged_from}
            for f in self.files
        ]
        return out


# ---------------------------------------------------------------- what the verdict's row makes a conversion do


@dataclass(frozen=True)
class Changes:
    """What a conversion changes in the tensors and the flag: the verdict's `Step` applied to this checkpoint."""

    dropped: list[str]
    added: dict[str, str]  # new key -> the key its values come from
    replaced: dict[str, str]  # key -> the key whose values it now holds
    flag: bool
    nothing_to_do: bool
    reason: str
    result: Verdict | None  # OUT's verdict, as the table's row says


def _changes(action: str, report: Report, keep: str | None, assume_tied: bool, force: bool) -> Changes:
    """Look the verdict up in the table, refuse what its row refuses, and apply its step to what is stored."""
    verdict = Verdict.NO_HEAD if report.embed is None else report.verdict
    step = TABLE[verdict].tie if action == "tie" else TABLE[verdict].untie
    _refuse_by_verdict(step, report, lifted=False)
    if action == "tie":
        _refuse_untieable_class(report)
    done = _already_done(step, report)
    if not done:
        _refuse_flag_flip(report, step.flag)
    if action == "tie":
        _refuse_gguf_without_head(report)
        _refuse_different_matrices(step, report, keep)
    _refuse_by_verdict(step, report, lifted=True, options={"keep": keep, "assume_tied": assume_tied})
    if done:
        past = f"already {action}d"
        reason = f"{past}; writing a normalised copy (--force)" if force else f"{past}: nothing to do"
        return Changes(_dropped(step, report) if force else [], {}, {}, step.flag, not force, reason,
                       step.result)
    kept = Member(keep) if step.keep is Member.CHOSEN else step.keep
    dropped, added, replaced = _dropped(step, report), _added(step, report), _replaced(report, kept)
    reason = _reason(action, step, report, kept, dropped, added)
    return Changes(dropped, added, replaced, step.flag, False, reason, step.result)


def _refuse_by_verdict(step: Step, report: Report, *, lifted: bool, options: dict[str, object] | None = None) -> None:
    """The row's refusal: those no option lifts first (`lifted=False`), those an option lifts after the checks."""
    refusal = step.refusal
    if refusal is None or not step.refuses(report.tie_flag.value) or (refusal.lifted_by is not None) != lifted:
        return
    if refusal.lifted_by is not None and (options or {}).get(refusal.lifted_by):
        return
    raise RefusedError(refusal.why.format(path=report.path, embed=report.embed.key if report.embed else None,
                                          head=report.head.key if report.head else None,
                                          difference=_difference_text(report) if refusal.lifted_by == "keep" else ""))


def _already_done(step: Step, report: Report) -> bool:
    """Whether the input is already what the command writes (nothing to do unless --force)."""
    if step.done is Done.NO_COPIES:  # tied: done unless a stored equal copy is left to drop
        return not report.reclaimable_keys and report.tie_flag.value is not False
    return step.done is Done.ALWAYS


def _refuse_untieable_class(report: Report) -> None:
    if report.tie_group is None and report.config is not None and report.architecture:
        raise RefusedError(
            f"{report.path}: transformers never ties {report.architecture}'s head (it has no tie map for it), so a "
            "dropped head would load as random values; keep both matrices"
        )


def _refuse_gguf_without_head(report: Report) -> None:
    if report.layout == "gguf" and report.head and report.head.stored:
        from ..formats.gguf_file import architecture, llama_cpp_head_rule

        rule = llama_cpp_head_rule(architecture(report.checkpoint.root / report.checkpoint.files[0]))
        if rule:
            raise RefusedError(f"{report.path}: refused: {rule}, so a tied GGUF would not load; keep it as it is")


def _refuse_different_matrices(step: Step, report: Report, keep: str | None) -> None:
    """Matrices that can never be one (shapes), or that one `--keep` must choose between (dtypes)."""
    if step.keep is not Member.CHOSEN:
        return
    embed, head = cast(TensorInfo, report.embed), cast(TensorInfo, report.head)
    if embed.shape != head.shape:
        raise RefusedError(f"{report.path}: {embed.key} and {head.key} have different shapes ({embed.shape} vs "
                           f"{head.shape}) and can never be tied")
    if keep not in ("embed", "head") and report.equal_after_cast:
        raise RefusedError(
            f"{report.path}: {embed.key} ({embed.dtype}) and {head.key} ({head.dtype}) hold the same values in "
            "different dtypes; tying stores one dtype: pass --keep embed or --keep head to choose which"
        )


def _refuse_flag_flip(report: Report, to: bool) -> None:
    """A flag that does more than tie (scales a forward, builds other modules) cannot be flipped losslessly."""
    flag = report.tie_flag
    if flag.value is not to and not flag.forced and flag.also_changes:
        raise RefusedError(
            f"{report.path}: setting {flag.path} to {str(to).lower()} also changes the model beyond the tie "
            f"({flag.also_changes}); tieconv cannot pin that in the config, so it leaves this checkpoint as is"
        )


def _difference_text(report: Report) -> str:
    from ..inspection.compare import difference

    embed, head = cast(TensorInfo, report.embed), cast(TensorInfo, report.head)
    if embed.shape != head.shape:
        return f"shapes differ ({embed.shape} vs {head.shape})"
    d = difference(report.checkpoint, embed.key, head.key)
    return (
        f"max abs difference {d['max_abs_diff']:.4g}, relative difference {d['relative_diff']:.4g}, "
        f"cosine similarity {d['cosine_similarity']:.4f}"
    )


def _dropped(step: Step, report: Report) -> list[str]:
    dropped: set[str] = set()
    if Drop.HEAD in step.drop and report.head is not None:
        dropped.add(report.head.key)
    if Drop.EQUAL_COPIES in step.drop:
        dropped.update(report.reclaimable_keys)
    if Drop.SHARED_TARGETS in step.drop:
        dropped.update(_shared_targets(report))
    return sorted(dropped)


def _added(step: Step, report: Report) -> dict[str, str]:
    ckpt: Checkpoint = report.checkpoint
    embed, head = cast(TensorInfo, report.embed).key, report.head.key if report.head else None
    if step.store is Store.EMBED_FROM_HEAD:
        return {embed: cast(str, head)}
    if step.store is Store.TARGETS:
        added = _unstored_targets(report, ckpt)
        if head and head not in ckpt.tensors and embed in ckpt.tensors:
            added[head] = embed
        return added
    return {}


def _replaced(report: Report, kept: Member | None) -> dict[str, str]:
    """The head's matrix kept: the embedding's key takes its values (the head's own key is dropped)."""
    if kept is Member.HEAD:
        return {cast(TensorInfo, report.embed).key: cast(TensorInfo, report.head).key}
    return {}


def _reason(action: str, step: Step, report: Report, kept: Member | None, dropped: list[str],
            added: dict[str, str]) -> str:
    if step.reason:
        stored = f", store {len(added)} other tie-map target(s) as their own tensors" if added else ""
        return step.reason.format(verdict=report.verdict, keep=kept.value if kept else "", stored=stored)
    if action == "tie":
        count = len(dropped)
        return f"drop {count} duplicate{'s' if count != 1 else ''} and tie" if count else "set the flag to tie"
    count = len(added) + len(_shared_targets(report))  # a target sharing its source's storage: written as its own
    what = "the tie-map target as its own tensor" if count == 1 else f"{count} tie-map targets as their own tensors"
    return f"store {what} and untie" if count else "set the flag to untie"


def _shared_targets(report: Report) -> list[str]:
    """Stored tie-map targets that share their source's storage (pickles keep tied tensors as one storage)."""
    tensors = report.checkpoint.tensors
    return [t for t, s in report.tie_map.items()
            if t in tensors and s in tensors and tensors[t].storage == tensors[s].storage]


def _unstored_targets(report: Report, ckpt: Checkpoint) -> dict[str, str]:
    """Every tie the flag makes whose target is not stored: key -> the stored key a loader fills it from.

    When the group's source is not stored either (a head that is the source, stored only as a target's
    copy), the stored member of the group stands in.
    """
    added = {}
    for target, source in report.tie_map.items():
        if target in ckpt.tensors:
            continue
        if source in ckpt.tensors:
            added[target] = source
        elif report.tie_group and source == report.tie_group.source:
            stored = [t for t in report.tie_group.targets if t in ckpt.tensors]
            if stored:
                added[target] = stored[0]
    for source in {s for s in report.tie_map.values()} - set(ckpt.tensors):
        stored = [t for t, s in report.tie_map.items() if s == source and t in ckpt.tensors]
        if stored:
            added[source] = stored[0]  # the source itself, filled from a stored target (symmetric tie)
    return added


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
    owner = report.tie_flag.path.rsplit(".", 1)[0] if "." in report.tie_flag.path else ""
    if owner and isinstance(config.get(owner), dict):
        changes[report.tie_flag.path] = flag  # the sub-config whose flag governs the head (decoder, text_config)
    return changes


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
TORCH_OUT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# entries of a training checkpoint that describe the optimizer (nanoGPT, Lightning, torchtune recipes)
OPTIMIZER_ENTRIES = ("optimizer", "optimizer_state_dict", "optimizer_states", "optim", "opt_state")


def output_kind(ckpt: Checkpoint, dst: str) -> tuple[bool, str]:
    """(OUT is a file, its format), from OUT's name: the output's kind mirrors the input's.

    A file IN gives a file OUT whose suffix decides the format (`.safetensors`, a torch suffix, or
    `.gguf` for a GGUF IN); a folder IN gives a folder OUT, whose weights keep the input's format
    (a folder of `.bin` files becomes safetensors, as transformers writes today).
    """
    text = str(dst)
    name = Path(text).name
    suffix = Path(name).suffix.lower()
    if ckpt.path.is_file():
        if text.endswith(("/", os.sep)) or not name:
            raise OutputError(f"{dst}: IN is a file, so OUT is a file: drop the trailing slash and name the file, "
                              f"e.g. {text.rstrip('/' + os.sep) or '.'}/model{Path(ckpt.path).suffix}")
        if ckpt.layout == "gguf":
            if suffix != ".gguf":
                raise OutputError(f"{dst}: a GGUF input is written as GGUF; name OUT *.gguf")
            return True, "gguf"
        if suffix == ".safetensors":
            return True, "safetensors"
        if suffix in TORCH_OUT_SUFFIXES:
            return True, "torch"
        if suffix == ".gguf":
            raise OutputError(f"{dst}: only a GGUF input can be written as GGUF; name OUT *.safetensors or *.pt")
        raise OutputError(f"{dst}: the suffix {suffix or '(none)'!r} names no format tieconv writes; name OUT "
                          "*.safetensors, or *.pt / *.pth / *.bin / *.ckpt for a torch file")
    if suffix in WEIGHT_SUFFIXES:
        raise OutputError(f"{dst}: IN is a folder, so OUT is a folder; name it without a file suffix "
                          f"(e.g. {text[: -len(suffix)] or 'out'})")
    if ckpt.layout == "torch-file":
        return False, "torch"
    if ckpt.layout == "gguf":
        return False, "gguf"
    return False, "safetensors"


def _output_files(ckpt: Checkpoint, dropped: set[str], added: dict[str, str], replaced: dict[str, str],
                  aliases: dict[str, str], fmt: str, out_name: str | None) -> list[PlannedFile]:
    # file by file, each in its data order, so copies read their sources sequentially
    original = {name: ckpt.tensors_in(name) for name in ckpt.files}
    by_file: dict[str, list[PlannedTensor]] = {name: [] for name in ckpt.files}
    for name, stored in original.items():
        planned = by_file[name]
        for t in stored:
            if t.key in dropped:
                continue
            src = ckpt.tensors[replaced[t.key]] if t.key in replaced else t
            planned.append(PlannedTensor(t.key, src.key, src.dtype, src.shape, src.nbytes))
            for new_key, source in added.items():
                if source == t.key:
                    planned.append(PlannedTensor(new_key, t.key, t.dtype, t.shape, t.nbytes))
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
        if out_name is not None:  # a file OUT: its own name
            name_in_out = out_name
        elif ckpt.layout in ("torch-file", "gguf"):  # a folder holding one such file: its name
            name_in_out = Path(name).name
        elif keep_names or len(groups) > 1:
            name_in_out = name if keep_names else shard_name(i, len(groups))
        else:
            name_in_out = "model.safetensors"
        unchanged = (
            fmt == "safetensors"
            and name.endswith(".safetensors")
            and [t.key for t in tensors] == [t.key for t in original[name]]
            and all(t.key == t.source for t in tensors)
            and meta == ckpt.file_metadata.get(name)
        )
        files.append(PlannedFile(name_in_out, tuple(tensors), meta, name if unchanged else None))
    return files


def weights_folder(ckpt: Checkpoint) -> str:
    """Where the weights live inside the folder the user named ("" unless sentence-transformers' subfolder)."""
    if ckpt.path.is_file() or ckpt.path == ckpt.root:
        return ""
    try:
        return ckpt.root.relative_to(ckpt.path).as_posix()
    except ValueError:
        return ""


def carried_files(ckpt: Checkpoint, fmt: str, drop_other_weights: bool) -> tuple[list[str], dict[str, str], list[str]]:
    """Every other file of a folder IN, recursively, as paths relative to IN: (carried, left out -> why, warnings).

    Links leaving IN are refused (never followed); links into a Hugging Face cache's blobs/ are carried as
    files. Weight files of another format than the one converted keep the old tie state: carried with a
    warning, or left out with `drop_other_weights`.
    """
    if ckpt.remote is not None:  # a Hub repo read over HTTP (a dry run): the small files its listing names
        return list(ckpt.remote.small_files), {}, []
    if ckpt.path.is_file():
        return [], {}, []
    base = ckpt.path
    sub = weights_folder(ckpt)
    converted = {f"{sub}/{n}" if sub else n for n in ckpt.files}
    for n in (SAFETENSORS_INDEX, BIN_INDEX, "config.json"):
        converted.add(f"{sub}/{n}" if sub else n)
    carried, left_out, others = [], {}, []
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        rel_folder = Path(folder).relative_to(base)
        for name in sorted(files) + [d for d in dirs if Path(folder, d).is_symlink()]:
            rel = (rel_folder / name).as_posix()
            if rel in converted:
                continue
            path = Path(folder) / name
            safe_member(base, rel, "the input folder")  # refuses links leaving IN
            if path.is_dir():
                raise OutputError(f"{path}: is a link to a folder; tieconv carries files only: copy it in instead")
            if not path.is_file():
                left_out[rel] = "not a regular file"
                continue
            if name.endswith(WEIGHT_SUFFIXES) or name.endswith((".index.json",)) and "model" in name:
                if drop_other_weights:
                    left_out[rel] = "another weight file (--drop-other-weights)"
                    continue
                others.append(rel)
            carried.append(rel)
    warnings = []
    if others:
        warnings.append(f"carried unchanged, with the input's tie state: {', '.join(others[:5])}"
                        + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                        + " (another weight format; pass --drop-other-weights to leave them out)")
    return carried, left_out, warnings


def training_entries(ckpt: Checkpoint) -> list[str]:
    """Top-level entries of a torch file besides its state dict's tensors (optimizer, iter_num, config...)."""
    if ckpt.layout != "torch-file":
        return []
    import torch

    from ..formats.checkpoint import NESTED_STATE_DICT_KEYS

    obj = ckpt.torch_object()
    if not isinstance(obj, dict):
        return []
    nested = next((k for k in NESTED_STATE_DICT_KEYS if isinstance(obj.get(k), dict)
                   and any(isinstance(v, torch.Tensor) for v in obj[k].values())), None)
    if nested is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        return [str(k) for k in obj if k != nested]
    return [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]


def plan(action: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep: str | None = None,
         assume_tied: bool = False, force: bool = False, embed: str | None = None, head: str | None = None,
         overwrite: bool = False, link: bool = False, drop_optimizer: bool = False,
         drop_other_weights: bool = False) -> tuple[Plan, Report]:
    """Compute what `tie` or `untie` would do, without writing or downloading anything.

    OUT's name decides the output's kind (see `output_kind`); whether OUT may be written there is
    checked by `convert.preflight`, before any real or dry run. A Hub repo is planned from its
    headers (and, where the verdict needs it, the two tensors' byte ranges); `tie` and `untie`
    download what a real run needs and plan again from the files.

    Example:
        >>> import tieconv
        >>> p, report = tieconv.plan("tie", "fixtures/llama-duplicated", "/tmp/never-written")
        >>> p.dropped, p.bytes_saved
        (['lm_head.weight'], 2048)
    """
    if keep not in (None, "embed", "head"):
        raise RefusedError(f"--keep must be 'embed' or 'head', not {keep!r}")
    if action not in ("tie", "untie"):
        raise ValueError(action)
    report, coerced = _inspect_input(src, embed, head)
    ckpt: Checkpoint = report.checkpoint
    is_file, fmt = output_kind(ckpt, str(dst))
    entries = training_entries(ckpt)
    left_out = _check_carriable(ckpt, entries, fmt, drop_optimizer)
    changes = _changes(action, report, keep, assume_tied, force or bool(coerced))
    if fmt == "torch":
        changes = _kept_as_one_storage(changes, action, report, force or bool(coerced))
    p = Plan(action, str(src), str(dst), report.verdict, None, changes.nothing_to_do, changes.reason)
    p.output_format, p.output_is_file, p.link, p.overwrite = fmt, is_file, link, overwrite
    p.bytes_before = p.bytes_after = report.bytes.total
    p.parameters_before = p.parameters_after = report.parameters.stored
    if changes.nothing_to_do:
        return p, report
    p.dropped, p.added, p.replaced = sorted(changes.dropped), dict(changes.added), dict(changes.replaced)
    if action == "untie":
        p.separated = _shared_targets(report)
    p.config_changes = _config_changes(report, ckpt, changes.flag)
    p.warnings.extend(coerced)
    carried_warnings = _lay_out(p, report, left_out, drop_other_weights)
    p.bytes_after = _output_bytes(ckpt, p)
    p.bytes_saved = report.bytes.total - p.bytes_after
    p.parameters_after = sum(_numel(t.shape) for f in p.files for t in f.tensors)
    p.output_verdict, forced_warning = _output_verdict(report, changes)
    p.warnings += ([forced_warning] if forced_warning else []) + carried_warnings
    p.warnings += _warnings(report, p, entries, drop_optimizer)
    p.loader_bytes_saved = _loader_bytes(report) - _loader_bytes_after(report, p)
    p.runtimes, still = _runtime_agreement(report, p.output_verdict)
    if still:  # the runtime tables, not a list of names here, say which runtimes ignore what OUT stores
        p.warnings.append("after the conversion these runtimes still use another head than transformers: "
                          + "; ".join(still))
    return p, report


def _inspect_input(src: str | os.PathLike[str], embed: str | None, head: str | None) -> tuple[Report, list[str]]:
    """The input's report, compared; a Hub repo from its headers. Also the flags read leniently (see below)."""
    from ..formats import hub

    if hub.repo_ref(src) is not None:
        return inspect(src, embed=embed, head=head, compare=True), []
    ckpt = open_checkpoint(src)
    if hub.shadows_repo_id(src):
        ckpt.notes.append(f"{src}: the local path was used, not the Hub repo of the same name")
    coerced = coerce_flags(ckpt)  # a flag written as "false" or 1: read, and written back as a boolean (--force)
    return inspect_checkpoint(ckpt, embed=embed, head=head, compare=True), coerced


def _kept_as_one_storage(changes: Changes, action: str, report: Report, force: bool) -> Changes:
    """Torch files keep tied tensors as one storage under both keys (nanoGPT loads both): none is dropped."""
    shared = set(_shared_targets(report))
    dropped = [k for k in changes.dropped if k not in shared]
    nothing = changes.nothing_to_do or (action == "tie" and not dropped and not force and report.verdict == "tied")
    return dataclasses.replace(changes, dropped=dropped, nothing_to_do=nothing)


def _lay_out(p: Plan, report: Report, left_out: dict[str, str], drop_other_weights: bool) -> list[str]:
    """Which output files hold which keys, which other files are carried, and the output's layout.

    Returns the warnings about carried files."""
    ckpt: Checkpoint = report.checkpoint
    aliases = {}
    if p.action == "tie" and report.head and report.embed and ckpt.config is None and p.output_format == "safetensors":
        aliases = {k: report.embed.key for k in p.dropped}  # record `dropped -> kept`, as save_model does
    p.weights_folder = weights_folder(ckpt)
    p.files = _output_files(ckpt, set(p.dropped), p.added, p.replaced, aliases, p.output_format,
                            Path(p.destination).name if p.output_is_file else None)
    p.copied_files, carried_left_out, carried_warnings = carried_files(ckpt, p.output_format, drop_other_weights)
    p.left_out = {**left_out, **carried_left_out}
    p.output_layout = _output_layout(ckpt, len(p.files), p.output_format)
    return carried_warnings


def _runtime_agreement(report: Report, output_verdict: Verdict | None) -> tuple[str, list[str]]:
    """The runtime table's sentence for this conversion, and the runtimes that still disagree after it."""
    from ..knowledge.runtimes import agreement_advice, still_disagreeing

    after = {"tied": "tied", "duplicated": "duplicated"}.get(output_verdict or "", "untied")
    try:
        return agreement_advice(report, after=after), still_disagreeing(report, after)
    except (KeyError, ValueError):  # a verdict or layout the runtime tables do not model
        return "", []


def _check_carriable(ckpt: Checkpoint, entries: list[str], fmt: str, drop_optimizer: bool) -> dict[str, str]:
    """A torch file's other entries (`training_entries`) go where they can be kept; returns what is left out."""
    if not entries:
        return {}
    optimizer = [e for e in entries if e in OPTIMIZER_ENTRIES]
    if fmt != "torch":
        raise OutputError(
            f"{ckpt.path}: holds entries besides its tensors ({', '.join(entries[:6])}) that safetensors cannot "
            "carry; name OUT *.pt (or *.pth, *.bin, *.ckpt) to keep them"
        )
    return {e: "optimizer state (--drop-optimizer)" for e in optimizer} if drop_optimizer else {}


def _output_bytes(ckpt: Checkpoint, p: Plan) -> int:
    """Bytes of tensor data OUT stores: a torch output keeps keys that share a storage as one storage."""
    seen, total = set(), 0
    for f in p.files:
        for t in f.tensors:
            same = p.output_format == "torch" and t.key == t.source and p.action == "tie"
            storage = ckpt.tensors[t.source].storage if same else (f.name, t.key)
            if storage not in seen:
                seen.add(storage)
                total += t.nbytes
    return total


def _output_verdict(report: Report, changes: Changes) -> tuple[Verdict | None, str | None]:
    """OUT's verdict as the table's row says (a normalised copy keeps the input's), and a warning if any."""
    if changes.result is Verdict.TIEABLE and report.tie_flag.forced:
        return Verdict.DUPLICATED, "transformers 5 forces this config class to tie, and re-ties equal copies at load"
    return changes.result, None


def _warnings(report: Report, p: Plan, entries: list[str], drop_optimizer: bool) -> list[str]:
    out = []
    if report.layout.startswith("hf-bin"):
        out.append("the .bin input is written as safetensors")
    optimizer = [e for e in entries if e in OPTIMIZER_ENTRIES]
    changed = p.dropped + list(p.added) + list(p.replaced) + p.separated
    if optimizer and not drop_optimizer and changed:
        out.append(f"kept {', '.join(optimizer)}, which no longer matches the changed parameters "
                   f"({', '.join(changed)}); pass --drop-optimizer to leave it out")
    if p.left_out:
        out.append("left out: " + ", ".join(f"{k} ({v})" for k, v in p.left_out.items()))
    return out


def _numel(shape: Iterable[int]) -> int:
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
        total += report.embed.nbytes  # type: ignore[union-attr]  # a head is allocated and filled with random values
    elif report.head and report.identical and report.bytes.reclaimable == 0 and report.head.stored:
        total += report.head.nbytes  # one storage in a .bin, two parameters once loaded untied
    return total


def _loader_bytes_after(report: Report, p: Plan) -> int:
    if p.action == "tie":
        return p.bytes_after
    if p.output_verdict == "duplicated":  # transformers re-ties equal copies
        return p.bytes_after - (report.head.nbytes if report.head else 0)
    return p.bytes_after


def _output_layout(ckpt: Checkpoint, nfiles: int, fmt: str) -> str:
    if ckpt.layout in ("safetensors-file", "torch-file", "gguf"):
        return {"safetensors": "safetensors-file", "torch": "torch-file", "gguf": "gguf"}[fmt]
    return "hf-safetensors" if nfiles == 1 else "hf-safetensors-sharded"
