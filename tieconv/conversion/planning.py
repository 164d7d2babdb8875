"""Planning `tie` and `untie`: what a conversion will do, computed as plain data before anything is written.

`plan()` inspects the input, decides per verdict what to drop, add or replace and what changes in
the config, and lays the output out file by file (`Plan`): which keys each file holds and where
each one's bytes come from. `--dry-run` and `--json` print it; `convert.execute` carries it out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ..formats.checkpoint import BIN_INDEX, SAFETENSORS_INDEX, Checkpoint, StoredTensor, open_checkpoint, safe_member
from ..errors import OutputError, RefusedError
from ..inspection.inspector import coerce_flags, inspect, inspect_checkpoint
from ..inspection.report import Report
from .writer import shard_name

# what _tie_ops and _untie_ops decide: (dropped, added, replaced, flag, nothing_to_do, reason)
_Ops = tuple[list[str], dict[str, str], dict[str, str], bool, bool, str]


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


def _difference_text(report: Report) -> str:
    from ..inspection.compare import difference

    ckpt = report.checkpoint
    if report.embed.shape != report.head.shape:  # type: ignore[union-attr]
        return f"shapes differ ({report.embed.shape} vs {report.head.shape})"  # type: ignore[union-attr]
    d = difference(ckpt, report.embed.key, report.head.key)  # type: ignore[union-attr]
    return (
        f"max abs difference {d['max_abs_diff']:.4g}, relative difference {d['relative_diff']:.4g}, "
        f"cosine similarity {d['cosine_similarity']:.4f}"
    )


def _refuse_flag_flip(report: Report, to: bool) -> None:
    """A flag that does more than tie (scales a forward, builds other modules) cannot be flipped losslessly."""
    flag = report.tie_flag
    if flag.value is not to and not flag.forced and flag.also_changes:
        raise RefusedError(
            f"{report.path}: setting {flag.path} to {str(to).lower()} also changes the model beyond the tie "
            f"({flag.also_changes}); tieconv cannot pin that in the config, so it leaves this checkpoint as is"
        )


def _tie_ops(report: Report, keep: str | None, assume_tied: bool, force: bool) -> _Ops:
    """(dropped, added, replaced, flag, nothing_to_do, reason) for `tie`."""
    path = report.path
    if report.verdict == "no-head" or report.embed is None:
        raise RefusedError(f"{path}: the model has no output head; there is nothing to tie")
    v, e, h = report.verdict, report.embed.key, report.head.key if report.head else None
    if report.tie_group is None and report.config is not None and report.architecture:
        raise RefusedError(
            f"{path}: transformers never ties {report.architecture}'s head (it has no tie map for it), so a "
            "dropped head would load as random values; keep both matrices"
        )
    if v not in ("tied",) or report.reclaimable_keys:
        _refuse_flag_flip(report, True)
    if report.layout == "gguf" and report.head and report.head.stored:
        from ..formats.gguf_file import architecture, llama_cpp_head_rule

        rule = llama_cpp_head_rule(architecture(report.checkpoint.root / report.checkpoint.files[0]))
        if rule:
            raise RefusedError(f"{path}: refused: {rule}, so a tied GGUF would not load; keep it as it is")
    if v in ("untied", "conflict"):
        if report.embed.shape != report.head.shape:  # type: ignore[union-attr]
            raise RefusedError(f"{path}: {e} and {h} have different shapes ({report.embed.shape} vs "
                               f"{report.head.shape}) and can never be tied")  # type: ignore[union-attr]
        if keep not in ("embed", "head") and report.equal_after_cast:
            raise RefusedError(
                f"{path}: {e} ({report.embed.dtype}) and {h} ({report.head.dtype}) hold the same values in "  # type: ignore[union-attr]
                "different dtypes; tying stores one dtype: pass --keep embed or --keep head to choose which"
            )
        if keep not in ("embed", "head"):
            raise RefusedError(
                f"{path}: {e} and {h} differ ({_difference_text(report)}); tying changes the model's outputs: "
                "pass --keep embed or --keep head to choose the surviving matrix"
            )
        dropped = sorted(set(report.reclaimable_keys) | {cast(str, h)})  # the head is stored
        replaced = {e: cast(str, h)} if keep == "head" else {}
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
        return [h], {}, {e: h}, True, False, "store the head's matrix as the embedding and tie"  # type: ignore[list-item, dict-item]
    flag_ties = report.tie_flag.value is True
    if v == "tied" and not report.reclaimable_keys and (flag_ties or report.tie_flag.value is None):
        if force:
            return sorted(_shared_targets(report)), {}, {}, True, False, "already tied; writing a normalised copy (--force)"
        return [], {}, {}, True, True, "already tied: nothing to do"
    # duplicated, tieable, or tied with other reclaimable tie-map copies; a target that is one storage with
    # its source (a .bin or torch file) is one tensor: a written output stores it once
    dropped = list(report.reclaimable_keys) + _shared_targets(report)
    count = len(set(dropped))
    return sorted(set(dropped)), {}, {}, True, False, \
        f"drop {count} duplicate{'s' if count != 1 else ''} and tie" if count else "set the flag to tie"


def _shared_targets(report: Report) -> list[str]:
    """Stored tie-map targets that share their source's storage (pickles keep tied tensors as one storage)."""
    tensors = report.checkpoint.tensors
    return [t for t, s in report.tie_map.items()
            if t in tensors and s in tensors and tensors[t].storage == tensors[s].storage]


def _untie_ops(report: Report, force: bool) -> _Ops:
    ckpt: Checkpoint = report.checkpoint
    path = report.path
    if report.verdict == "no-head" or report.embed is None:
        raise RefusedError(f"{path}: the model has no output head; there is nothing to untie")
    v, e, h = report.verdict, report.embed.key, report.head.key if report.head else None
    if v == "head-missing":
        raise RefusedError(
            f"{path}: there is no head to keep (the config unties and none is stored); "
            "`tieconv tie --assume-tied` is the other way out"
        )
    if v in ("untied", "tieable"):
        if force:
            return [], {}, {}, False, False, "already untied; writing a normalised copy (--force)"
        return [], {}, {}, False, True, "already untied: nothing to do"
    if v in ("tied", "duplicated", "conflict"):
        _refuse_flag_flip(report, False)
    if v == "conflict":
        # the head is stored; every other target the flag ties (BART's encoder and decoder embeddings) is not
        added = _unstored_targets(report, ckpt)
        return [], added, {}, False, False, "keep both matrices as stored" + (
            f", store {len(added)} other tie-map target(s) as their own tensors" if added else "") + " and untie"
    if v == "embed-missing":
        if report.tie_flag.value is False:
            raise RefusedError(f"{path}: the config unties and the embedding {e} is not stored: it is lost")
        return [], {e: h}, {}, False, False, "store the embedding as a copy of the head and untie"  # type: ignore[dict-item]
    # tied or duplicated: materialise every target of the tie map the flag controls
    added = _unstored_targets(report, ckpt)
    if h and h not in ckpt.tensors and e in ckpt.tensors:
        added[h] = e
    separated = _shared_targets(report)  # one storage in a pickle: written as two tensors
    count = len(added) + len(separated)
    what = "the tie-map target as its own tensor" if count == 1 else f"{count} tie-map targets as their own tensors"
    return [], added, {}, False, False, f"store {what} and untie" if count else "set the flag to untie"


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
        if out_name is not None:  # a file OUT: its own name
            name_in_out = out_name
        elif ckpt.layout in ("torch-file", "gguf"):  # a folder holding one such file: its name
            name_in_out = Path(name).name
        elif keep_names or len(groups) > 1:
            name_in_out = name if keep_names else shard_name(i, len(groups))
        else:
            name_in_out = "model.safetensors"
        original = [t.key for t in by_file_original(ckpt, name)]
        unchanged = (
            fmt == "safetensors"
            and name.endswith(".safetensors")
            and [t.key for t in tensors] == original
            and all(t.key == t.source for t in tensors)
            and meta == ckpt.file_metadata.get(name)
        )
        files.append(PlannedFile(name_in_out, tuple(tensors), meta, name if unchanged else None))
    return files


def by_file_original(ckpt: Checkpoint, name: str) -> list[StoredTensor]:
    return ckpt.tensors_in(name)


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
         overwrite: bool = False, link: bool = False, drop_optimizer: bool = False, drop_other_weights: bool = False,
         download: bool = True) -> tuple[Plan, Report]:
    """Compute what `tie` or `untie` would do, without writing anything.

    OUT's name decides the output's kind (see `output_kind`); whether OUT may be written there is
    checked by `convert.preflight`, before any real or dry run. A Hub repo is downloaded into the
    cache first; with `download=False` it is planned from its headers (and, where the verdict needs
    it, the two tensors' byte ranges) without any download.

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
    from ..formats import hub

    named = str(src)
    if download:
        src = hub.local_path(src)  # a repo id: into the cache, exactly the files a conversion needs
    coerced: list[str] = []
    if hub.repo_ref(src) is not None:  # planned from the repo's headers (download=False)
        report = inspect(src, embed=embed, head=head, compare=True)
        ckpt: Checkpoint = report.checkpoint
    else:
        ckpt = open_checkpoint(src)
        if hub.shadows_repo_id(src):
            ckpt.notes.append(f"{src}: the local path was used, not the Hub repo of the same name")
        coerced = coerce_flags(ckpt)  # a flag written as "false" or 1: read, and written back as a boolean
        force = force or bool(coerced)
        report = inspect_checkpoint(ckpt, embed=embed, head=head, compare=True)
    is_file, fmt = output_kind(ckpt, str(dst))
    left_out = _check_carriable(ckpt, fmt, drop_optimizer)
    if action == "tie":
        dropped, added, replaced, flag, nothing, reason = _tie_ops(report, keep, assume_tied, force)
    else:
        dropped, added, replaced, flag, nothing, reason = _untie_ops(report, force)
    if fmt == "torch":  # torch files keep tied tensors as one storage under both keys (nanoGPT loads both)
        dropped = [k for k in dropped if k not in _shared_targets(report)]
        nothing = nothing or (action == "tie" and not dropped and not force and report.verdict == "tied")
    p = Plan(action, named, str(dst), report.verdict, None, nothing, reason)
    p.output_format, p.output_is_file, p.link, p.overwrite = fmt, is_file, link, overwrite
    p.bytes_before = p.bytes_after = report.bytes.total
    p.parameters_before = p.parameters_after = report.parameters.stored
    if nothing:
        return p, report

    aliases = {}
    if action == "tie" and report.head and report.embed and ckpt.config is None and fmt == "safetensors":
        aliases = {k: report.embed.key for k in dropped}  # record `dropped -> kept`, as save_model does
    p.dropped, p.added, p.replaced = sorted(dropped), dict(added), dict(replaced)
    if action == "untie":
        p.separated = _shared_targets(report)
    p.config_changes = _config_changes(report, ckpt, flag)
    p.warnings.extend(coerced)
    p.weights_folder = weights_folder(ckpt)
    p.files = _output_files(ckpt, set(dropped), added, replaced, aliases, fmt,
                            Path(str(dst)).name if is_file else None)
    p.copied_files, carried_left_out, carried_warnings = carried_files(ckpt, fmt, drop_other_weights)
    p.left_out = {**left_out, **carried_left_out}
    p.output_layout = _output_layout(ckpt, len(p.files), fmt)
    output_total = _output_bytes(ckpt, p)
    p.bytes_after = output_total
    p.bytes_saved = report.bytes.total - output_total
    p.parameters_after = sum(_numel(t.shape) for f in p.files for t in f.tensors)
    p.output_verdict = _output_verdict(action, report, reason, p)
    p.warnings += carried_warnings + _warnings(action, report, p, ckpt, drop_optimizer)
    p.loader_bytes_saved = _loader_bytes(report) - _loader_bytes_after(report, p)
    p.runtimes, still = _runtime_agreement(report, p.output_verdict)
    if still:  # the runtime tables, not a list of names here, say which runtimes ignore what OUT stores
        p.warnings.append("after the conversion these runtimes still use another head than transformers: "
                          + "; ".join(still))
    return p, report


def _runtime_agreement(report: Report, output_verdict: str | None) -> tuple[str, list[str]]:
    """The runtime table's sentence for this conversion, and the runtimes that still disagree after it."""
    from ..knowledge.runtimes import agreement_advice, still_disagreeing

    after = {"tied": "tied", "duplicated": "duplicated"}.get(output_verdict or "", "untied")
    try:
        return agreement_advice(report, after=after), still_disagreeing(report, after)
    except (KeyError, ValueError):  # a verdict or layout the runtime tables do not model
        return "", []


def _check_carriable(ckpt: Checkpoint, fmt: str, drop_optimizer: bool) -> dict[str, str]:
    """A torch file's other entries go where they can be kept; returns what is left out on request."""
    entries = training_entries(ckpt)
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


def _output_verdict(action: str, report: Report, reason: str, p: Plan) -> str:
    if reason.endswith("(--force)"):
        return "tied" if action == "tie" else report.verdict  # a normalised copy of a consistent checkpoint
    if action == "tie":
        return "tied"
    if report.verdict == "conflict":
        return "untied"
    if report.tie_flag.forced:
        p.warnings.append("transformers 5 forces this config class to tie, and re-ties equal copies at load")
        return "duplicated"
    return "tieable"


def _warnings(action: str, report: Report, p: Plan, ckpt: Checkpoint, drop_optimizer: bool) -> list[str]:
    out = []
    if ckpt.layout.startswith("hf-bin"):
        out.append("the .bin input is written as safetensors")
    optimizer = [e for e in training_entries(ckpt) if e in OPTIMIZER_ENTRIES]
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
