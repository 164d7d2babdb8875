"""`diff`: does a loader build the same model from two checkpoints?

Two checkpoints are compared the way a loader sees them, not as files: for every parameter a
loader builds, the stored tensor whose bytes it gets on each side (after the tie map and the flag
that governs it, the base-model prefix, `dropped -> kept` aliases), compared byte for byte in
bounded chunks. Shards, file names and whether two parameters share one storage do not matter;
a parameter one side would start at random, a different dtype, different bytes, a tensor only one
side stores and a config field that changes what is built all do.

`compare_reports(a, b, expected_values=..., expected_config=...)` is the same check for two
already-inspected checkpoints, with the changes a conversion intends declared up front, so
`tie`/`untie` can verify their output with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..formats.checkpoint import TORCH_DTYPE_OF, Checkpoint, StoredTensor, read_json
from ..formats.tensor_file import TensorFile
from ..errors import InputError
from .report import Report, human_bytes

SCHEMA_VERSION = 1
# config fields that record who wrote the file, not what is built
IGNORED_CONFIG_FIELDS = frozenset({"transformers_version", "_name_or_path", "_commit_hash"})
# Byte comparison in 256 KiB chunks, not checkpoint.CHUNK_BYTES (16 MiB): a chunk that fits the CPU's L2 cache
# is still there when memcmp reads it, which measured about 2x faster on identical 1 GB shards here
COMPARE_CHUNK_BYTES = 256 << 10
STAT_CHUNK_ELEMENTS = 1 << 21  # max-difference statistics: 2M elements (16 MB as float64) per side at a time


class _Random:
    """Stands for "no stored tensor: the loader initialises this parameter" in a loader view."""

    _instance: _Random | None = None

    def __new__(cls) -> _Random:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "RANDOM"


RANDOM = _Random()


# ---------------------------------------------------------------- the report


@dataclass
class ValueDifference:
    """A parameter both sides load from stored bytes, whose values (or dtype, or shape) differ."""

    parameter: str  # named as in A
    kind: str  # "values" | "dtype" | "shape"
    a_key: str  # the stored key whose bytes A's loader uses
    b_key: str
    a_dtype: str
    b_dtype: str
    a_shape: list[int]
    b_shape: list[int]
    max_abs_diff: float | None = None  # None: not computable (shapes differ, quantized types)
    relative_diff: float | None = None  # max abs diff / max abs of A's values

    def describe(self) -> str:
        where = f"{self.parameter}" + (f" (A: {self.a_key}, B: {self.b_key})" if self.a_key != self.b_key else "")
        if self.kind == "shape":
            what = f"shapes differ ({self.a_shape} vs {self.b_shape})"
        elif self.kind == "dtype":
            what = f"dtypes differ ({self.a_dtype} vs {self.b_dtype})"
        else:
            what = "values differ"
        if self.max_abs_diff is not None:
            what += f", max abs difference {self.max_abs_diff:.4g}"
            if self.relative_diff is not None:
                what += f", relative {self.relative_diff:.4g}"
        return f"{where}: {what}"


@dataclass
class RandomParameter:
    """A parameter one side's loader starts at random (or at its initial value), not from the file."""

    parameter: str
    side: str  # "a" | "b"
    reason: str

    def describe(self) -> str:
        return f"{self.parameter}: {self.side.upper()}'s loader starts it at random ({self.reason})"


@dataclass
class StoredOnOneSide:
    """A tensor only one side stores, which no loader parameter takes."""

    key: str
    side: str  # "a" | "b": the side that stores it
    reason: str

    def describe(self) -> str:
        return f"{self.key}: stored only in {self.side.upper()}; {self.reason}"


@dataclass
class ConfigDifference:
    field: str  # dotted: "text_config.tie_word_embeddings"
    a: Any
    b: Any
    absent: str | None = None  # "a" | "b": the side whose file does not set it
    expected: Any = None  # set when B was expected to hold another value

    def describe(self) -> str:
        def show(side: str, value: Any) -> str:
            if self.absent != side:
                return _short(value)
            return "absent" if value is None else f"absent (the class default {_short(value)})"

        text = f"config {self.field}: {show('a', self.a)} in A, {show('b', self.b)} in B"
        return text + (f" (expected {_short(self.expected)})" if self.expected is not None else "")


@dataclass
class DiffReport:
    """What `tieconv diff A B` found. `to_dict()` is exactly the CLI's `--json` output."""

    a: str
    b: str
    family: str  # "transformers" | "no-config" | "gguf"
    equivalent: bool
    parameters: int  # parameters a loader builds (named as in A)
    bytes_compared: int
    sample_bytes: int | None  # None: every byte compared
    values: list[ValueDifference] = field(default_factory=list)
    random: list[RandomParameter] = field(default_factory=list)
    stored_on_one_side: list[StoredOnOneSide] = field(default_factory=list)
    config: list[ConfigDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def differences(self) -> list[str]:
        """Every difference as one line, in report order (values, random, one-sided, config)."""
        found: list[ValueDifference | RandomParameter | StoredOnOneSide | ConfigDifference] = [
            *self.values, *self.random, *self.stored_on_one_side, *self.config]
        return [d.describe() for d in found]

    def headline(self) -> str:
        """One line: "equivalent", or the first difference and how many more."""
        found = self.differences
        if not found:
            return "equivalent"
        more = len(found) - 1
        return found[0] + (f"; and {more} more difference{'s' if more != 1 else ''}" if more else "")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {"schema_version": out.pop("schema_version"), **out}


def _short(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def render(report: DiffReport) -> str:
    """The human output of `tieconv diff`."""
    lines = [f"{'A':<10} {report.a}", f"{'B':<10} {report.b}", f"{'loader':<10} {report.family}"]
    compared = f"{human_bytes(report.bytes_compared)} compared"
    if report.sample_bytes is not None:
        compared += f" (samples of {report.sample_bytes} bytes)"
    if report.equivalent:
        lines.append(f"{'result':<10} equivalent: a loader builds the same {report.parameters} parameters "
                     f"from both ({compared})")
    else:
        n = len(report.differences)
        lines.append(f"{'result':<10} NOT equivalent: {n} difference{'s' if n != 1 else ''} ({compared})")
        for label, items in (("values", report.values), ("random", report.random),
                             ("one side", report.stored_on_one_side), ("config", report.config)):
            lines += [f"{label:<10} {item.describe()}" for item in items]
    lines += [f"{'note':<10} {n}" for n in report.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------- entry points


def diff(a: str | os.PathLike[str], b: str | os.PathLike[str], *, sample_bytes: int | None = None) -> DiffReport:
    """Compare two checkpoints the way a loader sees them.

    Args:
        a, b: any layout `inspect` reads (HF folders, single files, GGUF, Hub repo ids); both must be
            read by the same family of loaders (transformers, no-config files, or GGUF).
        sample_bytes: None compares every byte; otherwise three samples of this many bytes per tensor.

    Returns:
        A `DiffReport`: `equivalent`, or the differences (values, parameters one side starts at
        random, tensors only one side stores, config fields).

    Example:
        >>> import tieconv
        >>> tieconv.diff("fixtures/llama-tied", "fixtures/llama-tied-sharded").equivalent
        True
        >>> tieconv.diff("fixtures/llama-tieable", "fixtures/llama-head-missing").random[0].describe()
        "lm_head.weight: B's loader starts it at random (the flag unties and it is not stored)"
    """
    from .. import collector

    with collector.paused():
        return compare_reports(_inspect_for_diff(a), _inspect_for_diff(b), sample_bytes=sample_bytes)


def _inspect_for_diff(path: str | os.PathLike[str]) -> Report:
    """`inspect` without its comparison (the loader view needs names, the tie map and the flag only).

    Where inspect refuses a checkpoint whose files read fine (no embedding under a known name, a quantized
    embedding), diff still compares it: every stored tensor as itself, without tie rules, and says so.
    """
    from ..formats.checkpoint import open_checkpoint
    from ..errors import TieconvError
    from .inspector import inspect
    from .report import ByteCounts, Parameters, TensorInfo, TieFlag
    from .verdicts import Verdict

    try:
        return inspect(path, compare=False)
    except InputError as refused:
        try:
            ckpt = open_checkpoint(path)
        except TieconvError:
            raise refused from None
        note = f"{path}: no tie rules applied, every stored tensor compared as itself ({refused})"
        return Report(path=str(ckpt.path), layout=ckpt.layout, files=list(ckpt.files), verdict=Verdict.NO_HEAD,
                      embed=TensorInfo("", False, None, None, None, 0), head=None,
                      tie_flag=TieFlag(None, "none", False), identical=None, equal_after_cast=None,
                      parameters=Parameters(0, 0), bytes=ByteCounts(0, 0), reclaimable_keys=[], tie_map={},
                      tie_group=None, architecture=None, config=ckpt.config_file, reason=str(refused), advice="", notes=[note],
                      checkpoint=ckpt)


def compare_reports(a: Report, b: Report, *, expected_values: dict[str, str] | None = None,
                    expected_config: dict[str, Any] | None = None, sample_bytes: int | None = None) -> DiffReport:
    """Compare two inspected checkpoints (`Report`s with their `.checkpoint`) as a loader sees them.

    Args:
        expected_values: parameter (named as in A) -> the parameter of A whose values B is expected
            to hold instead of its own (`tie --keep head`: `{embed_key: head_key}`).
        expected_config: dotted config field -> the value B is expected to hold, whatever A holds
            (`{"tie_word_embeddings": True}`); such fields are not reported unless B holds another value.
        sample_bytes: None compares every byte; otherwise three samples (start, middle, end) of this
            many bytes per tensor.
    """
    family_a, family_b = loader_family(a), loader_family(b)
    if family_a != family_b:
        raise InputError(
            f"{b.path}: different loader families ({family_a} for {a.path}, {family_b} for {b.path}); "
            "diff compares checkpoints that the same loader reads: convert one of them first"
        )
    return _Comparison(a, b, family_a, expected_values or {}, expected_config or {}, sample_bytes).run()


def loader_family(report: Report) -> str:
    """Which loaders read this checkpoint: "gguf" (llama.cpp), "transformers" (a config.json), "no-config"."""
    ckpt: Checkpoint = report.checkpoint
    if ckpt.layout == "gguf":
        return "gguf"
    return "transformers" if ckpt.config is not None else "no-config"


def loader_view(report: Report) -> dict[str, Any]:
    """Each parameter a loader builds from this checkpoint -> the stored key whose bytes it gets, or RANDOM.

    The rules (transformers 5; for files without a config, the no-config rules of `inspect`, which
    are TorchChat's and llama.cpp's: no flag, a missing head takes the embedding):
    - a stored key is itself; a key recorded in a file's metadata as `dropped -> kept` is `kept`;
    - a tie-map target that is not stored takes its source's value when the flag ties (or there is no
      flag), and starts at random when the flag unties;
    - a tie-map source that is not stored takes a stored target's value when the flag ties
      (transformers ties symmetrically), and starts at random otherwise;
    - a stored target keeps its own values even when the flag ties and they differ from the source's
      (transformers 5 and vLLM keep both; MLX-LM would use the source: a runtime question, not `diff`'s).

    This is the one place that reads the tie rules; `report.tie_map` is transformers' whole tie map and
    `report.tie_flag.governs` the ties the head's flag controls.
    """
    ckpt: Checkpoint = report.checkpoint
    ties = report.tie_flag.value is not False
    # the flag that governs the head's tie group undoes only the ties it governs (`tie_flag.governs`, as
    # inspection learns them from transformers); ties it does not govern hold whatever its value
    governed = set(report.tie_flag.governs) if report.tie_flag.governs else None

    def tie_holds(key: str) -> bool:
        return ties or (governed is not None and key not in governed)

    view: dict[str, Any] = dict(zip(ckpt.tensors, ckpt.tensors))  # in C: a 90k-tensor index
    for dropped, kept in ckpt.aliases.items():
        view.setdefault(dropped, kept)
    partners: dict[str, list[str]] = {}
    for target, source in report.tie_map.items():
        partners.setdefault(target, []).append(source)
        partners.setdefault(source, []).append(target)
    wanted = set(partners) | ({report.embed.key} if report.embed else set()) \
        | ({report.head.key} if report.head else set())
    wanted.discard("")  # a checkpoint whose embedding inspect could not name

    def resolve(key: str, seen: frozenset[str] = frozenset()) -> Any:
        if key in view:
            return view[key]
        if not tie_holds(key) or key in seen:
            return RANDOM
        for partner in partners.get(key, []):
            found = resolve(partner, seen | {key})
            if found is not RANDOM:
                return found
        return RANDOM

    for key in sorted(wanted):
        view[key] = resolve(key)
    # aliases may point at keys that only the tie map resolves (every other entry is a stored key's own)
    for key in sorted(wanted | ckpt.aliases.keys()):
        value = view[key]
        if value is not RANDOM and value not in ckpt.tensors:
            view[key] = resolve(value)
    return view


# ---------------------------------------------------------------- the comparison


class _Comparison:
    def __init__(self, a: Report, b: Report, family: str, expected_values: dict[str, str],
                 expected_config: dict[str, Any], sample_bytes: int | None):
        self.a, self.b, self.family = a, b, family
        self.ca: Checkpoint = a.checkpoint
        self.cb: Checkpoint = b.checkpoint
        self.expected_values, self.expected_config = expected_values, expected_config
        self.sample_bytes = sample_bytes
        self._file_order: dict[str, int] | None = None
        self.one_file_bytes = 0  # equal unread: the same bytes of one file on both sides
        self.out = DiffReport(str(a.path), str(b.path), family, True, 0, 0, sample_bytes)
        self._compared: dict[tuple[str, str], ValueDifference | None] = {}
        self._loader_names: dict[str, set[str] | None] = {}

    def run(self) -> DiffReport:
        view_a = loader_view(self.a)
        view_b_own = loader_view(self.b)
        to_a = self._names_in_a(view_a, view_b_own)
        view_b = {to_a.get(k, k): v for k, v in view_b_own.items()}
        self.out.parameters = len(view_a.keys() & view_b.keys())
        linked = self._in_one_file(view_a, view_b)
        params = sorted((view_a.keys() | view_b.keys()) - linked, key=self._read_order)
        from ..progress import bar

        total = self._bytes_to_compare(view_a, view_b, linked)
        with bar(total, "comparing") as progress:
            for p in params:
                self._parameter(p, view_a, view_b, progress)
        self._sharing_notes(view_a, view_b, linked)
        if self.one_file_bytes:
            self.out.notes.append(f"{human_bytes(self.one_file_bytes)} are the same bytes of one file on both sides "
                                  "(the same file, or hard links): equal without being read")
        self._compare_config()
        out = self.out
        out.notes += [n for r in (self.a, self.b) if r.embed is not None and r.embed.key == "" for n in r.notes]
        out.equivalent = not (out.values or out.random or out.stored_on_one_side or out.config)
        return out

    # -- naming: B's keys as A names them

    def _names_in_a(self, view_a: dict[str, Any], view_b: dict[str, Any]) -> dict[str, str]:
        """B's parameter name -> A's name for the same parameter, where the two are spelled differently.

        The roles inspection resolved (embedding, head) pair first; then keys that differ only by a
        base-model prefix (transformers adds or strips it at load, `embed_tokens.weight` ->
        `model.embed_tokens.weight`), or, without a config, by a wrapper prefix (`_orig_mod.`,
        `module.`: torch.compile and DDP add them, training scripts strip them).
        """
        from ..knowledge.names import strip_wrappers

        rename: dict[str, str] = {}
        roles = [(self.b.embed.key, self.a.embed.key)] if self.a.embed and self.b.embed else []
        if self.a.head and self.b.head:
            roles.append((self.b.head.key, self.a.head.key))
        for kb, ka in roles:
            if kb != ka and kb in view_b and ka in view_a and ka not in view_b and kb not in view_a:
                rename[kb] = ka
        only_a = [k for k in view_a if k not in view_b and k not in rename.values()]
        only_b = [k for k in view_b if k not in view_a and k not in rename]
        if self.family == "transformers":
            def same(ka: str, kb: str) -> bool:
                return ka.endswith("." + kb) or kb.endswith("." + ka)
        else:
            def same(ka: str, kb: str) -> bool:
                return strip_wrappers(ka) == strip_wrappers(kb)
        paired = 0
        for kb in only_b:
            matches = [ka for ka in only_a if same(ka, kb)]
            if len(matches) == 1:
                rename[kb] = matches[0]
                only_a.remove(matches[0])
                paired += 1
        if paired:
            example = next((kb, ka) for kb, ka in rename.items() if not (kb, ka) in roles)
            self.out.notes.append(
                f"{paired} key(s) are spelled with a different prefix in B (e.g. {example[0]} is A's {example[1]}); "
                "a loader reads them as the same parameters"
            )
        return rename

    def _read_order(self, param: str) -> tuple[int, int | str, int, str]:
        if self._file_order is None:  # a dict, not files.index: 90k parameters over 161 shards
            self._file_order = {name: i for i, name in enumerate(self.ca.files)}
        t = self.ca.tensors.get(param)
        return (0, self._file_order[t.file], t.offset or 0, param) if t else (1, "", 0, param)

    def _in_one_file(self, view_a: dict[str, Any], view_b: dict[str, Any]) -> set[str]:
        """The parameters both loaders build from their own key in one file on disk that both sides read (a
        shard `tie --link` hard-linked): equal unread, found file by file rather than tensor by tensor, as a
        90k-tensor index has 90k of them. The file's bytes are the same, so are its keys and their offsets."""
        def inode(backend: TensorFile) -> tuple[int, ...] | None:
            return backend.identity[1:3] if backend.identity is not None else None  # linking changes ctime

        files_b = {inode(f): f for f in self.cb.backends.values() if inode(f) is not None}
        found: set[str] = set()
        for fa in self.ca.backends.values():
            fb = files_b.get(inode(fa))
            keys = list(fa.keys())
            if fb is None or keys != list(fb.keys()):
                continue
            loaded_as_stored = [k for k in keys if view_a.get(k) == k and view_b.get(k) == k
                                and k not in self.expected_values]
            found.update(loaded_as_stored)
            self.one_file_bytes += (fa.totals()[2] if len(loaded_as_stored) == len(keys)
                                    else sum(fa.tensors[k].nbytes for k in loaded_as_stored))
        return found

    def _bytes_to_compare(self, view_a: dict[str, Any], view_b: dict[str, Any], skipped: set[str]) -> int:
        """For the progress bar: each pair of stored tensors is compared once, whatever ties lead to it."""
        pairs = {(view_a.get(self.expected_values.get(p, p)), view_b[p])
                 for p in (view_a.keys() & view_b.keys()) - skipped}
        return sum(self.ca.tensors[ka].nbytes for ka, kb in pairs if isinstance(ka, str) and isinstance(kb, str))

    # -- one parameter

    def _parameter(self, p: str, view_a: dict[str, Any], view_b: dict[str, Any], progress: Any) -> None:
        out = self.out
        in_a, in_b = p in view_a, p in view_b
        if not (in_a and in_b):
            side, report = ("a", self.a) if in_a else ("b", self.b)
            source = (view_a if in_a else view_b)[p]
            if source is RANDOM:  # only this side's architecture has it, and gives it no value
                out.random.append(RandomParameter(p, side, self._random_reason(report, p)))
            elif source != p:  # (keys B spells differently are in both views: only_b keys are B's own)
                out.notes.append(f"{p}: only {side.upper()}'s architecture ties it (to {source})")
            else:
                self._one_sided(p, side, source)
            return
        source_a = view_a.get(self.expected_values.get(p, p), RANDOM)
        source_b = view_b[p]
        if source_a is RANDOM or source_b is RANDOM:
            if source_a is RANDOM and source_b is RANDOM:
                out.notes.append(f"{p}: both loaders start it at random ({self._random_reason(self.a, p)})")
            elif source_a is RANDOM:
                out.random.append(RandomParameter(p, "a", self._random_reason(self.a, p)))
            else:
                out.random.append(RandomParameter(p, "b", self._random_reason(self.b, p)))
            return
        pair = (source_a, source_b)
        if pair not in self._compared:
            self._compared[pair] = self._values(p, source_a, source_b, progress)
        found = self._compared[pair]
        if found is not None:
            out.values.append(ValueDifference(**{**asdict(found), "parameter": p}))

    def _random_reason(self, report: Report, p: str) -> str:
        if report.tie_flag.value is False and (p in report.tie_map or p in report.tie_map.values()):
            return "the flag unties and it is not stored"
        return "it is not stored and no tie gives it a value"

    def _one_sided(self, p: str, side: str, stored_key: str) -> None:
        """A parameter only one side's loader builds from stored bytes: random on the other, or ignored."""
        report = self.a if side == "a" else self.b
        other = "b" if side == "a" else "a"
        if self.family == "transformers":
            builds = self._loader_builds(report, stored_key)
            if builds is True:
                self.out.random.append(RandomParameter(p, other, f"only {side.upper()} stores it"))
                return
            reason = ("a loader ignores it: the model has no such parameter" if builds is False else
                      "whether the model has such a parameter could not be learned from transformers")
        elif self.family == "gguf":
            reason = "llama.cpp refuses a file whose tensors are not exactly the ones it needs"
        else:
            reason = "a strict load_state_dict rejects the file that stores it or the one that lacks it"
        self.out.stored_on_one_side.append(StoredOnOneSide(stored_key, side, reason))

    def _loader_builds(self, report: Report, key: str) -> bool | None:
        """Whether transformers' model for this config has a parameter or persistent buffer `key`."""
        config = report.checkpoint.config
        cache_key = repr(sorted(config.items(), key=lambda kv: kv[0]))
        if cache_key not in self._loader_names:
            self._loader_names[cache_key] = _model_state_names(config)
        names = self._loader_names[cache_key]
        if names is None:
            return None
        return key in names or any(n.endswith("." + key) or key.endswith("." + n) for n in names)

    # -- values

    def _values(self, p: str, ka: str, kb: str, progress: Any) -> ValueDifference | None:
        ta, tb = self.ca.tensors[ka], self.cb.tensors[kb]

        def difference(kind: str, stats: bool) -> ValueDifference:
            d = ValueDifference(p, kind, ka, kb, ta.dtype, tb.dtype, list(ta.shape), list(tb.shape))
            if stats:
                d.max_abs_diff, d.relative_diff = _max_difference(self.ca, ta, self.cb, tb)
            return d

        if tuple(ta.shape) != tuple(tb.shape):
            progress.update(ta.nbytes)
            return difference("shape", False)
        if ta.dtype != tb.dtype:
            progress.update(ta.nbytes)
            return difference("dtype", True)
        if not self._bytes_equal(ta, tb, progress):
            return difference("values", True)
        return None

    def _bytes_equal(self, ta: StoredTensor, tb: StoredTensor, progress: Any) -> bool:
        if ta.nbytes != tb.nbytes:
            return False
        if self._one_file(ta, tb):
            self.one_file_bytes += ta.nbytes
            progress.update(ta.nbytes)
            return True
        if self.sample_bytes is not None:
            n = self.sample_bytes
            for start in sorted({0, max(0, ta.nbytes // 2 - n // 2), max(0, ta.nbytes - n)}):
                if self.ca.read_range(ta.key, start, n) != self.cb.read_range(tb.key, start, n):
                    return False
            self.out.bytes_compared += min(ta.nbytes, 3 * n)
            progress.update(ta.nbytes)
            return True
        # each stream reuses its own buffer, so A's chunk stays valid while B's is read
        chunks = zip(self.ca.iter_bytes(ta.key, COMPARE_CHUNK_BYTES), self.cb.iter_bytes(tb.key, COMPARE_CHUNK_BYTES))
        for chunk_a, chunk_b in chunks:
            if chunk_a != chunk_b:
                return False
            self.out.bytes_compared += len(chunk_a)
            progress.update(len(chunk_a))
        return True

    def _one_file(self, ta: StoredTensor, tb: StoredTensor) -> bool:
        """Both sides are the same bytes of one file on disk (a shard `tie --link` hard-linked): equal unread.

        Device and inode only: linking changes a file's ctime, so the rest of the identity differs.
        """
        ia = self.ca.tensors.file_of(ta.key).identity
        ib = self.cb.tensors.file_of(tb.key).identity
        return (ia is not None and ib is not None and ia[1:3] == ib[1:3]
                and ta.offset is not None and ta.offset == tb.offset)

    def _sharing_notes(self, view_a: dict[str, Any], view_b: dict[str, Any], linked: set[str]) -> None:
        """Sharing is not a value difference: say which parameters one side keeps as one tensor and the other not.

        A `linked` parameter is its own key in a safetensors file (each key its own bytes) on both sides: it
        shares only with parameters a loader reads from its key, which are not linked; so only the others,
        and the linked keys they point at, are looked at.
        """
        rest = (view_a.keys() & view_b.keys()) - linked
        pointed_at = linked.intersection([view_a[p] for p in rest] + [view_b[p] for p in rest])
        both = [p for p in rest | pointed_at
                if isinstance(view_a[p], str) and isinstance(view_b[p], str) and p not in self.expected_values]
        groups_a, groups_b = _shared_groups(self.ca, view_a, both), _shared_groups(self.cb, view_b, both)
        differing = {d.parameter for d in self.out.values}
        seen: set[frozenset[str]] = set()
        for p in sorted(groups_a.keys() | groups_b.keys()):  # a parameter in no group is alone on both sides
            ga, gb = groups_a.get(p, (p,)), groups_b.get(p, (p,))
            members = frozenset(ga) | frozenset(gb)
            if ga == gb or members in seen:
                continue
            seen.add(members)
            one, other, group = ("A", "B", ga) if len(ga) > len(gb) else ("B", "A", gb)
            equal = "" if members & differing else " (equal values)"
            self.out.notes.append(f"{', '.join(group)}: one tensor in {one}, stored apart in {other}{equal}")

    # -- config

    def _flag_does_more(self) -> bool:
        """Flipping the flag changes more than ties on either side (scaling, whole sub-models)."""
        return bool(self.a.tie_flag.also_changes or self.b.tie_flag.also_changes)

    def _compare_config(self) -> None:
        config_a, config_b = _loader_config(self.a), _loader_config(self.b)
        raw_a, raw_b = _flatten(config_a), _flatten(config_b)
        expected = self.expected_config

        def differing(flat_a: dict[str, Any], flat_b: dict[str, Any]) -> list[str]:
            return [n for n in sorted(flat_a.keys() | flat_b.keys())
                    if n.rsplit(".", 1)[-1] not in IGNORED_CONFIG_FIELDS and n not in expected
                    and flat_a.get(n, _ABSENT) != flat_b.get(n, _ABSENT)]

        flat_a, flat_b = raw_a, raw_b
        found = differing(raw_a, raw_b)
        if found and self.family == "transformers":
            # a field one file leaves out may hold the class default, and a config class derives fields
            # from others (T5: scale_decoder_outputs from tie_word_embeddings): compare what the loader
            # builds. Only when the files differ: importing transformers costs seconds
            effective_a, effective_b = _effective_config(config_a), _effective_config(config_b)
            if effective_a is not None and effective_b is not None:
                flat_a, flat_b = _flatten(effective_a), _flatten(effective_b)
                found = differing(flat_a, flat_b)
        for name in found:
            if name.rsplit(".", 1)[-1] == "tie_word_embeddings" and not self._flag_does_more():
                # the flag's only effect is sharing, which the loader views already account for (a tie target
                # it leaves unfilled shows as a random parameter): not a difference, as sharing is not
                self.out.notes.append(f"config {name}: {_short(flat_a.get(name))} in A, {_short(flat_b.get(name))} "
                                      "in B; with the stored tensors it only decides what is shared")
                continue
            self.out.config.append(ConfigDifference(name, flat_a.get(name), flat_b.get(name), _absent(name, raw_a, raw_b)))
        for name, value in expected.items():
            held = raw_b.get(name, _ABSENT)
            if held != value:
                self.out.config.append(ConfigDifference(
                    name, raw_a.get(name), None if held is _ABSENT else held, _absent(name, raw_a, raw_b), value))


def _absent(name: str, raw_a: dict[str, Any], raw_b: dict[str, Any]) -> str | None:
    """The side whose file does not set `name` while the other's does."""
    if (name in raw_a) == (name in raw_b):
        return None
    return "b" if name in raw_a else "a"


_ABSENT = object()


def _shared_groups(ckpt: Checkpoint, view: dict[str, Any], params: list[str]) -> dict[str, tuple[str, ...]]:
    """Parameter -> every parameter that is the same tensor on this side (tie, alias, one storage), sorted."""
    sharing = {key for b in ckpt.backends.values() if not b.keys_own_their_bytes for key in b.keys()}
    by_storage: dict[object, list[str]] = {}
    for p in params:
        key = view[p]
        by_storage.setdefault(ckpt.tensors[key].storage if key in sharing else key, []).append(p)
    return {p: tuple(sorted(group)) for group in by_storage.values() if len(group) > 1 for p in group}


def _flatten(config: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{"text_config.tie_word_embeddings": False, ...}: nested objects become dotted fields."""
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _loader_config(report: Report) -> dict[str, Any] | None:
    """The configuration its loader reads: config.json, Meta's params.json, or a GGUF file's metadata."""
    ckpt: Checkpoint = report.checkpoint
    if ckpt.layout == "gguf":
        return _gguf_metadata(ckpt)
    if ckpt.config is not None:
        return ckpt.config
    if ckpt.config_file == "params.json":
        doc = read_json(ckpt.root / "params.json", "params.json")
        return doc if isinstance(doc, dict) else None
    return None


def _gguf_metadata(ckpt: Checkpoint) -> dict[str, Any]:
    """GGUF key-value fields (not the header counts) as values; long arrays by a digest of their bytes."""
    from ..formats.gguf_file import read_metadata

    return read_metadata(ckpt.root / ckpt.files[0])


def _effective_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config as its transformers class builds it (defaults filled in, derived fields set), or None."""
    from ..knowledge import architecture as arch

    if not config or arch.needs_remote_code(config):
        return None
    try:
        cls = arch._model_class(config)
        if cls is None:
            return None
        clean = {k: v for k, v in config.items() if k not in ("auto_map", "quantization_config")}
        return cls.config_class.from_dict(clean).to_dict()  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a config transformers cannot build: the raw fields are compared
        return None


def _model_state_names(config: dict[str, Any] | None) -> set[str] | None:
    """Keys of the state dict transformers' model for `config` has (as saved), or None when unknown.

    Built at full depth on the meta device (no memory), only when a tensor is stored on one side only.
    """
    from ..knowledge import architecture as arch

    if not config or arch.needs_remote_code(config):
        return None
    if any(isinstance(config.get(k), int) and config[k] > arch.MAX_FULL_DEPTH for k in arch.DEPTH_KEYS):
        return None
    try:
        import logging

        import torch
        import transformers

        transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        logging.getLogger("transformers").setLevel(logging.ERROR)
        cls = arch._model_class(config)
        if cls is None:
            return None
        clean = {k: v for k, v in config.items() if k not in ("auto_map", "quantization_config")}
        with torch.device("meta"):
            model = cls(cls.config_class.from_dict(clean))
        names = set(model.state_dict().keys())
        return set(arch._disk_names(model, names).values()) | names
    except Exception:  # noqa: BLE001 - a config transformers cannot build: which keys it loads is unknown
        return None


# ---------------------------------------------------------------- statistics for differing tensors


def _max_difference(ca: Checkpoint, ta: StoredTensor, cb: Checkpoint, tb: StoredTensor) -> tuple[float | None, float | None]:
    """(max abs difference, relative difference) of two same-shape tensors, streamed element-aligned chunks.

    Only for tensors already known to differ. Types torch cannot read (GGUF's quantized blocks) give None.
    """
    if tuple(ta.shape) != tuple(tb.shape) or ta.dtype not in TORCH_DTYPE_OF or tb.dtype not in TORCH_DTYPE_OF:
        return None, None
    import torch

    dtype_a, dtype_b = getattr(torch, TORCH_DTYPE_OF[ta.dtype]), getattr(torch, TORCH_DTYPE_OF[tb.dtype])
    if dtype_a.is_complex or dtype_b.is_complex:
        return None, None
    max_diff = max_a = 0.0
    for xa, xb in zip(_elements(ca, ta, dtype_a), _elements(cb, tb, dtype_b)):
        xa, xb = xa.double(), xb.double()
        max_diff = max(max_diff, (xa - xb).abs().max().item())
        max_a = max(max_a, xa.abs().max().item())
    if not math.isfinite(max_diff):  # an infinity in one side only: no number says more than "differ"
        return None, None
    return max_diff, (max_diff / max_a if max_a and math.isfinite(max_a) else None)


def _elements(ckpt: Checkpoint, t: StoredTensor, dtype: Any) -> Iterator[Any]:
    import torch

    chunk_bytes = STAT_CHUNK_ELEMENTS * dtype.itemsize
    for chunk in ckpt.iter_bytes(t.key, chunk_bytes):
        if len(chunk):
            yield torch.frombuffer(bytearray(chunk), dtype=dtype)


__all__ = ["RANDOM", "DiffReport", "compare_reports", "diff", "loader_family", "loader_view", "render"]
