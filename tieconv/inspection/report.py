"""The inspection report: dataclasses whose fields mirror the JSON schema field for field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..knowledge.runtimes import Prediction

SCHEMA_VERSION = 2  # 2: tie_group; embed/head null without a token embedding; the flag's path and reach
from .verdicts import PROBLEM_VERDICTS as PROBLEM_VERDICTS  # re-exported: `scan` counts problems by it
from .verdicts import TABLE, Verdict


@dataclass
class TensorInfo:
    key: str
    stored: bool
    shape: list[int] | None
    dtype: str | None
    file: str | None
    nbytes: int


@dataclass
class TieFlag:
    value: bool | None
    source: str  # "config.json:tie_word_embeddings", "class default", "none"...
    forced: bool  # no value in the file changes it
    top_level: bool | None = None  # raw values as written in the file
    sub_config: bool | None = None  # ... in the sub-config whose flag governs the head (see `path`)
    path: str = "tie_word_embeddings"  # where the governing flag lives: "text_config.tie_word_embeddings"...
    governs: list[str] = field(default_factory=list)  # keys whose tie flipping the flag undoes, as stored
    also_changes: str | None = None  # what else flipping the flag changes (conversions refuse to flip it)


@dataclass
class TieGroup:
    """The head's tie group as transformers defines it: loaders fill every target from the source."""

    source: str
    targets: list[str]


@dataclass
class Parameters:
    stored: int
    unique: int


@dataclass
class ByteCounts:
    total: int
    reclaimable: int


@dataclass
class Report:
    """What `tieconv inspect` found.  `to_dict()` is exactly the CLI's `--json` output."""

    path: str
    layout: str
    files: list[str]
    verdict: Verdict  # a str Enum: compares equal to "tied", "duplicated"... (see tieconv.inspection.verdicts)
    embed: TensorInfo | None  # None: the model has no token embedding (no-head)
    head: TensorInfo | None
    tie_flag: TieFlag
    identical: bool | None
    equal_after_cast: bool | None
    parameters: Parameters
    bytes: ByteCounts
    reclaimable_keys: list[str]
    tie_map: dict[str, str]  # target -> source for every tie the flag makes, as stored
    tie_group: TieGroup | None  # None: transformers never ties this head (or there is none)
    architecture: str | None
    config: str | None
    reason: str
    advice: str
    notes: list[str] = field(default_factory=list)
    downloaded_bytes: int = 0  # bytes fetched from the Hub to decide (0 for local paths)
    runtimes: list[Prediction] | None = None  # what each runtime uses as the head (tieconv.knowledge.runtimes.Prediction rows)
    schema_version: int = SCHEMA_VERSION
    checkpoint: Any = field(default=None, repr=False, compare=False)  # the reader, for conversion

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)  # a plain string is accepted, and checked
        if self.runtimes is None:
            from ..knowledge.runtimes import predict

            self.runtimes = predict(self)

    @property
    def reclaimable_bytes(self) -> int:
        return self.bytes.reclaimable

    @property
    def problem(self) -> bool:
        return self.verdict in PROBLEM_VERDICTS

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "checkpoint"}
        return {"schema_version": out.pop("schema_version"), **out}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def paint(verdict: str, colour: bool) -> str:
    """The verdict in its table colour (other words, such as scan's "unreadable", in the default colour)."""
    if not colour:
        return str(verdict)
    code = TABLE[Verdict(verdict)].colour if verdict in TABLE else "0"
    return f"\x1b[{code}m{verdict}\x1b[0m"


def render(report: Report, colour: bool = False) -> str:
    """A short, readable table (ANSI colours only when asked: a terminal without NO_COLOR)."""

    def tensor_line(label: str, t: TensorInfo | None) -> str:
        if t is None:
            return f"{label:<10} none"
        where = f"{t.dtype} {t.shape} {human_bytes(t.nbytes)} in {t.file}" if t.stored else "not stored"
        return f"{label:<10} {t.key}  ({where})"

    flag = report.tie_flag
    flag_text = "none (no config)" if flag.value is None else f"{str(flag.value).lower()} ({flag.source})"
    if flag.top_level is not None and flag.sub_config is not None and flag.top_level != flag.sub_config:
        owner = flag.path.rsplit(".", 1)[0]
        flag_text += f"; top level says {str(flag.top_level).lower()}, {owner} says {str(flag.sub_config).lower()}"
    identical = {True: "yes", False: "no", None: "not compared"}[report.identical]
    if report.equal_after_cast is not None:
        identical += f" (equal after casting: {'yes' if report.equal_after_cast else 'no'})"
    lines = [
        f"{'path':<10} {report.path}",
        f"{'layout':<10} {report.layout}  ({len(report.files)} file{'s' if len(report.files) != 1 else ''})",
        f"{'model':<10} {report.architecture or 'unknown (no config)'}",
        f"{'verdict':<10} {paint(report.verdict, colour)}  - {report.reason}",
        tensor_line("embedding", report.embed),
        tensor_line("head", report.head),
        f"{'tie flag':<10} {flag_text}",
        f"{'identical':<10} {identical}",
        f"{'size':<10} {human_bytes(report.bytes.total)}, reclaimable {human_bytes(report.bytes.reclaimable)}"
        f"  ({report.parameters.unique:,} unique of {report.parameters.stored:,} stored parameters)",
    ]
    if report.layout == "hub":
        lines.append(f"{'download':<10} {human_bytes(report.downloaded_bytes)} fetched from the Hub")
    lines += [f"{'note':<10} {n}" for n in report.notes]
    lines.append(f"{'advice':<10} {report.advice}")
    return "\n".join(lines)
