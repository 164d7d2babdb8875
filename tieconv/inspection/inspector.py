"""`inspect`: name a checkpoint's tying state with one verdict, and the evidence."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..knowledge import architecture as arch
from ..formats.checkpoint import Checkpoint, StoredTensor, open_checkpoint, read_member_json
from .compare import bytes_identical, equal_after_cast
from ..errors import InputError, TieconvError, UnsupportedCheckpointError
from ..knowledge.names import GGUF_PAIRS, KNOWN_PAIRS, find_pair
from .report import ByteCounts, Parameters, Report, TensorInfo, TieFlag, TieGroup, human_bytes
from ..formats.safetensors_header import FLOAT_DTYPES
from .verdicts import TABLE, Verdict

# companions that quantization libraries store beside a quantized weight
QUANT_SUFFIXES = (".SCB", ".absmax", ".quant_map", ".quant_state", ".qweight", ".scales", ".weight_scale", ".qzeros")


@dataclass
class Names:
    """Where the embedding, the head and the flag come from, before any bytes are read."""

    embed: str | None  # the other member of the head's tie group a loader uses; None: no token embedding
    head: str | None
    tie_map: dict[str, str]  # target -> source for every tie the flag makes, as stored
    flag: TieFlag
    architecture: str | None
    has_head: bool
    group: TieGroup | None = None  # the head's tie group; None: the head is never tied
    head_is_source: bool = False  # FSMT, BLT: the head is the group's source, the embedding a target


def inspect(path: str | os.PathLike[str], *, embed: str | None = None, head: str | None = None, compare: bool = True) -> Report:
    """Inspect the checkpoint at `path` and return a `Report`.

    Args:
        path: a model folder or a single checkpoint file.
        embed, head: keys as stored, overriding what tieconv would find.
        compare: compare the two matrices byte by byte when the verdict needs it
            (otherwise such verdicts are `undecided`).

    Example:
        >>> import tieconv
        >>> report = tieconv.inspect("fixtures/gpt2-tied")
        >>> print(report.verdict, report.head.stored)
        tied False
    """
    from ..formats import hub

    ref = hub.repo_ref(path)
    if ref is not None:
        return hub.inspect_repo(ref, embed=embed, head=head, compare=compare)
    ckpt = open_checkpoint(path)
    if hub.shadows_repo_id(path):
        ckpt.notes.append(f"{path}: the local path was used, not the Hub repo of the same name")
    return inspect_checkpoint(ckpt, embed=embed, head=head, compare=compare)


def inspect_checkpoint(ckpt: Checkpoint, *, embed: str | None = None, head: str | None = None,
                       compare: bool = True) -> Report:
    check_flag_types(ckpt.config, ckpt.root / (ckpt.config_file or "config.json"))
    notes = list(ckpt.notes)
    check_overrides(ckpt, embed, head)
    names = resolve_names(ckpt, notes, embed, head)
    return _decide(ckpt, names, notes, compare)


# ---------------------------------------------------------------- flags that are not booleans

_SPELLINGS = {"true": True, "false": False}


def _non_boolean_flags(config: object) -> list[tuple[str, dict[str, Any], str]]:
    """(field as written, the dict holding it, its key) for each tie flag that is not a JSON boolean."""
    found = []
    if isinstance(config, dict):
        holders = [("", config)] + [(f"{k}.", v) for k, v in config.items() if k.endswith("_config") and isinstance(v, dict)]
        for prefix, holder in holders:
            if arch.FLAG in holder and not isinstance(holder[arch.FLAG], bool):
                found.append((prefix + arch.FLAG, holder, arch.FLAG))
    return found


def _shown(value: object) -> str:
    text = json.dumps(value)
    kind = {str: "a string", int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    shown = text if len(text) <= 40 else text[:37] + "..."
    return shown if value is None else f"{shown} ({kind})"


def check_flag_types(config: object, where: Path) -> None:
    """Refuse a tie flag that is not a JSON boolean: never read it as absent, nor guess what it means.

    transformers 5 refuses such a config (StrictDataclassFieldValidationError), while loaders that
    test truthiness tie with "false" and 1.
    """
    for field, holder, key in _non_boolean_flags(config):
        raise InputError(
            f"{where}: {field} is {_shown(holder[key])}, not true or false: transformers refuses to load this config "
            "and other loaders read it as they please; write a boolean, or let `tieconv tie`/`untie` write one")


def coerce_flags(ckpt: Checkpoint) -> list[str]:
    """For tie/untie: replace each non-boolean flag in `ckpt.config` by the boolean it spells ("false", 0...).

    Returns one message per flag for the plan; a value that spells no boolean is refused.
    """
    messages = []
    where = ckpt.root / (ckpt.config_file or "config.json")
    for field, holder, key in _non_boolean_flags(ckpt.config):
        value = holder[key]
        if isinstance(value, str) and value.strip().lower() in _SPELLINGS:
            reading = _SPELLINGS[value.strip().lower()]
        elif type(value) is int and value in (0, 1):
            reading = bool(value)
        elif value is None:
            reading = None
        else:
            raise InputError(f"{where}: {field} is {_shown(value)}, which spells no boolean; write true or false")
        if reading is None:
            del holder[key]
            messages.append(f"{field} was null, which transformers refuses: read as absent; the output's config "
                            "holds a boolean")
        else:
            holder[key] = reading
            messages.append(f"{field} was {_shown(value)}, which transformers refuses: read as "
                            f"{json.dumps(reading)}; the output's config holds a boolean")
    return messages


# ---------------------------------------------------------------- names and flag


def check_overrides(ckpt: Checkpoint, embed: str | None, head: str | None) -> None:
    """`--embed`/`--head` must name a stored matrix (a head may also be the unstored key the loader reads).

    A typo must never reach planning: `tie --embed model.embed_tokens.weigth` would otherwise drop a
    trained head and write a stray tensor.
    """
    if embed is None and head is None:
        return
    loader_head = None
    if head is not None and head not in ckpt.tensors and head not in ckpt.aliases:
        try:
            loader_head = resolve_names(ckpt, [], None, None).head
        except TieconvError:
            loader_head = None
    for option, key in (("--embed", embed), ("--head", head)):
        if key is None:
            continue
        stored = ckpt.tensors.get(key)
        if stored is None and key in ckpt.aliases:
            stored = ckpt.tensors.get(ckpt.aliases[key])
        if stored is None:
            if option == "--head" and key == loader_head:
                continue
            import difflib

            close = difflib.get_close_matches(key, list(ckpt.tensors), n=3, cutoff=0.6)
            hint = (f"did you mean {', '.join(repr(k) for k in close)}?" if close
                    else f"stored keys include {', '.join(repr(k) for k in sorted(ckpt.tensors)[:4])}")
            raise InputError(f"{ckpt.path}: {option} {key!r} is not a stored key; {hint}")
        if len(stored.shape) != 2:
            raise InputError(f"{ckpt.path}: {option} {key!r} has shape {list(stored.shape)}, not a matrix "
                             "(vocab x hidden); name the embedding or head matrix")


def _first_stored(ckpt: Checkpoint, candidates: list[str], prefix: str = "") -> str:
    for key in candidates:
        if key in ckpt.tensors:
            return key
    for key in candidates:
        if key in ckpt.aliases:
            return key
    # transformers adds or strips the base model prefix at load (`embed_tokens.weight` saved from a base
    # model loads into `model.embed_tokens.weight`), exactly that prefix and nothing else
    for key in candidates:
        found = arch.stored_key(key, ckpt.tensors, prefix)
        if found is not None:
            return found
    return candidates[0]


def resolve_names(ckpt: Checkpoint, notes: list[str], embed: str | None = None, head: str | None = None) -> Names:
    config = ckpt.config
    info = None
    if config is not None:
        if arch.needs_remote_code(config):
            notes.append("config.json asks for remote code (auto_map): not executed; names found from the data")
        else:
            try:
                info = arch.learn(config, keys=list(ckpt.tensors) + list(ckpt.aliases))
            except Exception as exc:  # noqa: BLE001 - a config transformers cannot build: fall back to the data
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                notes.append(f"transformers could not build this config ({first}); names found from the data")
            else:
                if info is None:
                    model = arch.architecture_name(config) or "this model type"
                    notes.append(f"transformers does not know {model}; names found from the data")
    if info is not None:
        return _names_from_architecture(ckpt, info, embed, head)

    flag = _flag_without_architecture(ckpt)
    pair = find_pair(list(ckpt.tensors) + list(ckpt.aliases), GGUF_PAIRS if ckpt.layout == "gguf" else KNOWN_PAIRS)
    if pair is None and not (embed and head):
        sample = ", ".join(sorted(ckpt.tensors)[:6])
        raise InputError(
            f"{ckpt.path}: found no embedding or head under a known name (keys include: {sample}); "
            "name them with --embed KEY --head KEY"
        )
    found_embed, found_head = pair if pair else (embed, head)
    embed_key = cast(str, embed or found_embed)  # a found pair, or both --embed and --head
    head_key = head or found_head
    architecture = arch.architecture_name(config) if config else None
    return Names(
        embed=embed_key,
        head=head_key,
        tie_map={head_key: embed_key} if head_key else {},
        flag=flag,
        architecture=architecture or None,
        has_head=head_key is not None,
        group=TieGroup(embed_key, [head_key]) if head_key else None,
    )


def _names_from_architecture(ckpt: Checkpoint, info: arch.ArchitectureInfo, embed: str | None,
                             head: str | None) -> Names:
    config = ckpt.config
    value, source, top, sub = info.effective_flag(cast("dict[str, Any]", config))  # learn() needed a config
    mem = info.memory_names

    # a file saved with transformers 5's in-memory names (VLMs) gets unstored keys in the same style
    stored = set(ckpt.tensors) | set(ckpt.aliases)
    memory_style = any(mem.get(d, d) != d and mem.get(d, d) in stored for d in mem)

    def stored_name(disk: str) -> str:
        candidates = [mem.get(disk, disk), disk] if memory_style else [disk, mem.get(disk, disk)]
        return _first_stored(ckpt, candidates, info.base_model_prefix)

    governs = [stored_name(t) for t in info.governed]
    flag = TieFlag(value, source, info.forced, top, sub, info.flag_path, governs, info.also_changes)
    if info.embed is None and not (embed and head):
        return Names(None, None, {}, flag, info.architecture, has_head=False)

    group = info.head_group
    head_is_source = group is not None and group[0] == info.head
    # the ties the flag makes: the head's group, and every other group flipping the flag unties with it
    full = info.tie_map
    active = {t: full[t] for t in info.governed if t in full}
    if group is not None:
        active.update({t: group[0] for t in group[1]})
    tie_map = {stored_name(t): stored_name(s) for t, s in active.items()}
    pair_embed = info.pair_embed
    resolved = Names(
        embed=embed or stored_name(cast(str, pair_embed or info.embed)),
        head=head or (stored_name(info.head) if info.head else None),
        tie_map=tie_map,
        flag=flag,
        architecture=info.architecture,
        has_head=info.head is not None or head is not None,
        group=TieGroup(stored_name(group[0]), [stored_name(t) for t in group[1]]) if group else None,
        head_is_source=head_is_source,
    )
    if (embed or head) and resolved.head:
        if resolved.group is not None:  # keys named by the user stand for the group's pair
            resolved.tie_map.setdefault(resolved.head, cast(str, resolved.embed))
    return resolved


def _flag_without_architecture(ckpt: Checkpoint) -> TieFlag:
    config = ckpt.config
    source_file = ckpt.config_file
    if config is None and ckpt.config_file == "params.json":
        config = read_member_json(ckpt.root, "params.json", "params.json")
        check_flag_types(config, ckpt.root / "params.json")
    if isinstance(config, dict):
        top = config.get(arch.FLAG)
        text_cfg = config.get("text_config")
        text = text_cfg.get(arch.FLAG) if isinstance(text_cfg, dict) else None
        top = top if isinstance(top, bool) else None
        text = text if isinstance(text, bool) else None
        if top is not None:
            return TieFlag(top, f"{source_file}:{arch.FLAG}", False, top, text)
        if text is not None:
            return TieFlag(text, f"{source_file}:text_config.{arch.FLAG}", False, top, text, f"text_config.{arch.FLAG}")
    return TieFlag(None, "none", False)


# ---------------------------------------------------------------- verdict


def _tensor_info(ckpt: Checkpoint, key: str) -> TensorInfo:
    t = ckpt.tensors.get(key)
    if t is None:
        return TensorInfo(key, False, None, None, None, 0)
    return TensorInfo(key, True, list(t.shape), t.dtype, t.file, t.nbytes)


def _check_plain_float(ckpt: Checkpoint, keys: list[str]) -> None:
    if ckpt.layout == "gguf":
        return  # quantized tensors are GGUF's normal state; ties there compare type and bytes
    for key in keys:
        t = ckpt.tensors.get(key)
        if t is None:
            continue
        stem = key[: -len(".weight")] if key.endswith(".weight") else key
        companions = [stem + s for s in QUANT_SUFFIXES if stem + s in ckpt.tensors or key + s in ckpt.tensors]
        if t.dtype not in FLOAT_DTYPES or companions:
            why = f"stored as {t.dtype}" + (f" with quantization data ({companions[0]})" if companions else "")
            raise UnsupportedCheckpointError(
                f"{ckpt.path}: {key} is quantized ({why}); tying needs plain float tensors of one dtype: "
                "inspect the unquantized checkpoint"
            )


def _decide(ckpt: Checkpoint, names: Names, notes: list[str], compare: bool) -> Report:
    """The verdict and its evidence: what is stored, how the two matrices compare, what `tie` would reclaim."""
    if names.embed is None:
        return _no_token_embedding(ckpt, names, notes)
    _check_pair_stored(ckpt, names)
    _check_plain_float(ckpt, [k for k in (names.embed, names.head) if k])
    evidence = _gather_evidence(ckpt, names, notes, compare)
    reclaim_keys = _reclaimable_copies(ckpt, names, evidence.identical, compare)
    verdict, reason = _verdict(evidence)
    parameters, byte_counts = _counts(ckpt, reclaim_keys)
    report = Report(
        path=str(ckpt.path),
        layout=ckpt.layout,
        files=list(ckpt.files),
        verdict=verdict,
        embed=_tensor_info(ckpt, names.embed),
        head=_tensor_info(ckpt, names.head) if names.has_head and names.head else None,
        tie_flag=names.flag,
        identical=evidence.identical,
        equal_after_cast=evidence.equal_after_cast,
        parameters=parameters,
        bytes=byte_counts,
        reclaimable_keys=reclaim_keys,
        tie_map=dict(names.tie_map),
        tie_group=names.group if names.has_head else None,
        architecture=names.architecture,
        config=ckpt.config_file,
        reason=reason,
        advice="",
        notes=notes,
        checkpoint=ckpt,
    )
    report.advice = _advice(report)
    return report


def _check_pair_stored(ckpt: Checkpoint, names: Names) -> None:
    """Refuse names of which nothing is stored (not even as an alias): the keys must be named by hand."""
    embed_key, head_key = cast(str, names.embed), names.head
    embed_stored, head_stored = embed_key in ckpt.tensors, head_key is not None and head_key in ckpt.tensors
    aliased = head_key in ckpt.aliases or embed_key in ckpt.aliases
    if not embed_stored and not head_stored and names.has_head and not aliased:
        raise InputError(
            f"{ckpt.path}: neither the embedding {embed_key!r} nor the head {head_key!r} is stored; "
            "name them with --embed KEY --head KEY"
        )
    if not embed_stored and not names.has_head:
        raise InputError(f"{ckpt.path}: the embedding {embed_key!r} is not stored; name it with --embed KEY")


@dataclass(frozen=True)
class Evidence:
    """Everything the verdict is decided from: the flag, which of the pair is stored, how the two compare."""

    flag: TieFlag
    has_head: bool  # False: the model has no output embedding
    head_is_source: bool  # FSMT, BLT: the head is the tie group's source
    embed: StoredTensor | None  # None: not stored
    head: StoredTensor | None
    aliased: bool  # the file's metadata records one of the pair as an alias of the other
    identical: bool | None  # None: not compared
    equal_after_cast: bool | None = None

    @property
    def both_stored(self) -> bool:
        return self.embed is not None and self.head is not None

    @property
    def same_storage(self) -> bool:
        return self.embed is not None and self.head is not None and self.embed.storage == self.head.storage

    @property
    def shapes_differ(self) -> bool:
        return self.embed is not None and self.head is not None and self.embed.shape != self.head.shape

    @property
    def dtypes_differ(self) -> bool:
        return self.embed is not None and self.head is not None and self.embed.dtype != self.head.dtype


def _gather_evidence(ckpt: Checkpoint, names: Names, notes: list[str], compare: bool) -> Evidence:
    """Which of the pair is stored (or recorded as an alias), and whether their bytes are identical."""
    embed_key, head_key = cast(str, names.embed), names.head
    embed = ckpt.tensors.get(embed_key)
    head = ckpt.tensors.get(head_key) if head_key is not None else None
    head_aliased = head is None and ckpt.aliases.get(head_key or "") == embed_key
    embed_aliased = embed is None and head_key is not None and ckpt.aliases.get(embed_key) == head_key
    if head_aliased or embed_aliased:
        dropped, kept = (head_key, embed_key) if head_aliased else (embed_key, head_key)
        notes.append(f"{dropped} is recorded in the file's metadata as sharing {kept}")
    evidence = Evidence(names.flag, names.has_head, names.head_is_source, embed, head,
                        head_aliased or embed_aliased, identical=None)
    return _compare_pair(ckpt, evidence, compare)


def _compare_pair(ckpt: Checkpoint, evidence: Evidence, compare: bool) -> Evidence:
    """Whether the two stored matrices are identical: one storage is, different shapes are not, else the bytes."""
    embed, head = evidence.embed, evidence.head
    if embed is None or head is None:
        return evidence
    if evidence.same_storage:
        return dataclasses.replace(evidence, identical=True)
    if evidence.shapes_differ:
        return dataclasses.replace(evidence, identical=False)
    if not compare:
        return evidence
    identical = bytes_identical(ckpt, embed.key, head.key)
    cast_equal = equal_after_cast(ckpt, embed.key, head.key) if evidence.dtypes_differ and ckpt.layout != "gguf" else None
    return dataclasses.replace(evidence, identical=identical, equal_after_cast=cast_equal)


def _reclaimable_copies(ckpt: Checkpoint, names: Names, head_identical: bool | None, compare: bool) -> list[str]:
    """Every stored, bit-identical copy of a tie-map target: what `tie` would reclaim."""
    reclaim_keys: list[str] = []
    for target, source in names.tie_map.items():
        ts, ss = ckpt.tensors.get(target), ckpt.tensors.get(source)
        if ts is None or ss is None or ts.storage == ss.storage:
            continue
        if target == names.head:
            equal = head_identical
        else:
            equal = bytes_identical(ckpt, source, target) if compare else None
        if equal:
            reclaim_keys.append(target)
    return reclaim_keys


def _counts(ckpt: Checkpoint, reclaim_keys: list[str]) -> tuple[Parameters, ByteCounts]:
    """Parameters and bytes as stored, and what `tie` would reclaim (one pass over the files' totals)."""
    stored, unique, total = ckpt.totals()
    reclaim = [ckpt.tensors[k] for k in reclaim_keys]
    return (Parameters(stored, unique - sum(t.numel for t in reclaim)),
            ByteCounts(total, sum(t.nbytes for t in reclaim)))


def _no_token_embedding(ckpt: Checkpoint, names: Names, notes: list[str]) -> Report:
    """Speech and vision models (wav2vec2, ViTMAE...): nothing to tie, and no keys to name."""
    parameters, byte_counts = _counts(ckpt, [])
    return Report(
        path=str(ckpt.path), layout=ckpt.layout, files=list(ckpt.files), verdict=Verdict.NO_HEAD, embed=None,
        head=None, tie_flag=names.flag, identical=None, equal_after_cast=None,
        parameters=parameters, bytes=byte_counts, reclaimable_keys=[], tie_map={},
        tie_group=None, architecture=names.architecture, config=ckpt.config_file,
        reason=f"{names.architecture} has no token embedding",
        advice=_advice_text(Verdict.NO_HEAD, str(ckpt.path), "0 B"), notes=notes, checkpoint=ckpt,
    )


# ---------------------------------------------------------------- which verdict the evidence gives

_UNDECIDED = "both are stored but were not compared; compare them to decide"


def _verdict(e: Evidence) -> tuple[Verdict, str]:
    """The verdict and the reason for it; the flag says which rules apply."""
    if not e.has_head:
        return Verdict.NO_HEAD, "the model has no output embedding"
    if e.head_is_source and e.flag.value and (e.embed is None) != (e.head is None):
        # FSMT, BLT: the head is the group's source; transformers fills the embedding from whichever is stored
        which = "the head (the tie's source)" if e.head is not None else "the embedding"
        return Verdict.TIED, f"the flag ties and only {which} is stored"
    if e.flag.value is None or (e.flag.forced and e.flag.value):
        return _data_decides(e)
    if e.flag.value:
        return _flag_ties(e)
    return _flag_unties(e)


def _data_decides(e: Evidence) -> tuple[Verdict, str]:
    """No config, or a flag the config class forces: what is stored decides."""
    lead = "no config found: " if e.flag.value is None else "the flag is forced, so the data decides: "
    if e.aliased:
        return Verdict.TIED, lead + "one storage: the file's metadata records one key as an alias of the other"
    if e.head is None:
        if e.embed is None:
            return Verdict.EMBED_MISSING, lead + "the head is stored under an alias but the embedding is not"
        return Verdict.TIED, lead + "no head stored: the embedding serves as the head"
    if e.embed is None:
        return Verdict.EMBED_MISSING, lead + "the head is stored but the embedding is not"
    if e.same_storage:
        return Verdict.TIED, lead + "the embedding and the head are one storage"
    if e.identical is None:
        return Verdict.UNDECIDED, lead + _UNDECIDED
    if e.identical:
        if e.flag.forced:
            return Verdict.DUPLICATED, lead + "both are stored, bit-identical; transformers ties equal copies"
        return Verdict.TIEABLE, lead + "both are stored, bit-identical"
    return Verdict.UNTIED, lead + _how_they_differ(e)


def _flag_ties(e: Evidence) -> tuple[Verdict, str]:
    if e.head is None:
        if e.embed is None:
            return Verdict.EMBED_MISSING, "the flag ties but the embedding is not stored"
        return Verdict.TIED, "the flag ties and the head is not stored" + (" (recorded as an alias)" if e.aliased else "")
    if e.embed is None:
        return Verdict.EMBED_MISSING, "the head is stored, the embedding is not; transformers ties symmetrically"
    if e.same_storage:
        return Verdict.TIED, "the flag ties and both keys share one storage"
    if e.identical is None:
        return Verdict.UNDECIDED, "the flag ties; " + _UNDECIDED
    if e.identical:
        return Verdict.DUPLICATED, "the flag ties and the head is stored as a bit-identical copy"
    return Verdict.CONFLICT, "the flag ties but " + _how_they_differ(e) + "; runtimes disagree on which one is the head"


def _flag_unties(e: Evidence) -> tuple[Verdict, str]:
    if e.head is None:
        return Verdict.HEAD_MISSING, "the flag unties but no head is stored; each loader fills it differently"
    if e.embed is None:
        return Verdict.EMBED_MISSING, "the flag unties and the embedding is not stored: it is lost"
    if e.same_storage:
        return Verdict.TIEABLE, "the flag unties; both keys share one storage"
    if e.identical is None:
        return Verdict.UNDECIDED, "the flag unties; " + _UNDECIDED
    if e.identical:
        return Verdict.TIEABLE, "the flag unties and the two are bit-identical"
    return Verdict.UNTIED, "the flag unties and " + _how_they_differ(e)


def _how_they_differ(e: Evidence) -> str:
    embed, head = cast(StoredTensor, e.embed), cast(StoredTensor, e.head)
    if e.shapes_differ:
        return f"shapes differ ({list(embed.shape)} vs {list(head.shape)}), so they can never be tied"
    if e.dtypes_differ:
        return f"both are stored with different types ({embed.dtype} embedding, {head.dtype} head)"
    return "both are stored and differ"


# ---------------------------------------------------------------- what to run next


def _advice(report: Report) -> str:
    if report.tie_group is None and report.head is not None and report.verdict == Verdict.TIEABLE:
        return f"Consistent as is; transformers never ties {report.architecture}'s head, so it stays stored."
    return _advice_text(report.verdict, report.path, human_bytes(report.bytes.reclaimable), report)


def _advice_text(verdict: Verdict, path: str, saved: str, report: Report | None = None) -> str:
    row = TABLE[verdict]
    agreement = ""
    if row.advised_result is not None and report is not None:
        from ..knowledge.runtimes import agreement_advice

        agreement = agreement_advice(report, after=row.advised_result.value)
    return row.advice.format(path=path, saved=saved, agreement=agreement)
