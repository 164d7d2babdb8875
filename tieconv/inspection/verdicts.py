"""The verdicts `inspect` names, and one table of what each verdict means and makes the other commands do.

Everything that depends on the verdict alone is a column of `TABLE` (one `VerdictRow` per verdict):
the advice `inspect` prints, whether `--check` fails on it, what `tie` and `untie` keep, drop, store
and refuse (`Step`), and what `load_state_dict` does by default (`Load`). Which verdict a checkpoint
gets is the inspector's decision (`inspector.decide_verdict`); what depends on more than the verdict
(shapes, dtypes, the runtime tables, a class without a tie map) stays in the code that reads the row.

This module imports nothing heavy: the CLI reads it to write its help. The rows are NamedTuples, immutable
like frozen dataclasses but a quarter of their cost to define, which every `tieconv` start pays.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum, Flag, auto
from typing import NamedTuple


class Verdict(str, Enum):
    """A checkpoint's tying state. A `str`: each member equals (and prints as) its JSON value."""

    TIED = "tied"
    DUPLICATED = "duplicated"
    UNTIED = "untied"
    TIEABLE = "tieable"
    CONFLICT = "conflict"
    HEAD_MISSING = "head-missing"
    EMBED_MISSING = "embed-missing"
    NO_HEAD = "no-head"
    UNDECIDED = "undecided"

    def __str__(self) -> str:  # "tied", not "Verdict.TIED", in f-strings and print (as StrEnum, new in 3.11)
        return self.value


class Member(Enum):
    """Whose matrix `tie` keeps under both names."""

    EMBED = "embed"
    HEAD = "head"
    CHOSEN = "chosen"  # the user's `--keep embed|head`; refused without it


class Drop(Flag):
    """Which stored keys `tie` leaves out of OUT (combined with `|`)."""

    NOTHING = 0
    HEAD = auto()
    EQUAL_COPIES = auto()  # every stored tie-map target bit-identical to its source (`reclaimable_keys`)
    SHARED_TARGETS = auto()  # every tie-map target stored as one storage with its source (a .bin or torch file)


class Store(Enum):
    """Which keys `untie` writes that IN does not store."""

    NOTHING = "nothing"
    TARGETS = "every tie-map target"  # each unstored target a loader reads, as a copy of its source
    EMBED_FROM_HEAD = "the embedding, from the head"


class Done(Enum):
    """When a command finds nothing to do (and writes nothing unless `--force`)."""

    NEVER = "never"
    ALWAYS = "always"
    NO_COPIES = "when no copy is stored"  # tied, and no tie-map target is stored as a separate equal copy


class Refusal(NamedTuple):
    """Why a command refuses a checkpoint of this verdict; `{path}`, `{embed}`, `{head}` are filled in."""

    why: str
    lifted_by: str | None = None  # the option that makes the command go ahead ("keep", "assume_tied")
    only_if_flag: bool | None = None  # refused only when the input's flag has this value


class Step(NamedTuple):
    """What `tie` or `untie` does to a checkpoint of one verdict."""

    result: Verdict | None  # OUT's verdict; None: always refused
    flag: bool  # the flag OUT's config gets
    # what the plan says it does ("{verdict}", "{keep}", "{stored}" filled in); "" when it depends on what is
    # stored (the planner counts it) or there is nothing to do
    reason: str = ""
    keep: Member | None = None  # `tie`: whose matrix both names hold (None: the two are equal already)
    drop: Drop = Drop.NOTHING
    store: Store = Store.NOTHING
    done: Done = Done.NEVER
    refusal: Refusal | None = None

    def refuses(self, flag: bool | None) -> bool:
        """Whether this step refuses the input before options are considered."""
        return self.refusal is not None and self.refusal.only_if_flag in (None, flag)


class Load(Enum):
    """What `load_state_dict(tie=None)` does: follow the checkpoint."""

    AS_STORED = "as stored"
    SHARE = "tie-map targets are the embedding's tensor"  # tied, duplicated
    EMBED_FROM_HEAD = "the embedding is the head's tensor when the flag ties"
    WARN = "as stored, with a warning"
    REFUSE = "refused: pass tie=True or tie=False"


class VerdictRow(NamedTuple):
    meaning: str  # one line, as the README's verdict table says it
    check_fails: bool  # `inspect --check` and `scan --check` exit 1
    colour: str  # ANSI colour: 32 green (consistent), 33 yellow (wasted bytes, unknown), 31 red (runtimes differ)
    advice: str  # what to run next; `{path}`, `{saved}`, `{agreement}` are filled in
    tie: Step
    untie: Step
    load: Load
    load_message: str = ""  # the warning or refusal; `{path}`, `{embed}`, `{head}` are filled in
    # the verdict the advised command produces, for the runtime table's "who agrees after it" (`{agreement}`)
    advised_result: Verdict | None = None


_NOT_COMPARED = Refusal("{path}: the embedding and the head were not compared, so the verdict is undecided; "
                        "inspect it again without --no-compare")
_KEEP_ONE = Step(Verdict.TIED, True, "tie {verdict} keeping the {keep}'s matrix", keep=Member.CHOSEN,
                 drop=Drop.HEAD | Drop.EQUAL_COPIES, refusal=Refusal(
                     "{path}: {embed} and {head} differ ({difference}); tying changes the model's outputs: "
                     "pass --keep embed or --keep head to choose the surviving matrix", lifted_by="keep"))
_STORE_TARGETS = Step(Verdict.TIEABLE, False, store=Store.TARGETS)

TABLE: dict[Verdict, VerdictRow] = {
    Verdict.TIED: VerdictRow(
        "one copy, as intended", False, "32",
        "Nothing to do: the head is the embedding.",
        tie=Step(Verdict.TIED, True, drop=Drop.EQUAL_COPIES | Drop.SHARED_TARGETS, done=Done.NO_COPIES),
        untie=_STORE_TARGETS,
        load=Load.SHARE,
    ),
    Verdict.DUPLICATED: VerdictRow(
        "the flag ties, the head is an equal copy: wasted bytes", True, "33",
        "Run `tieconv tie {path} OUT` to drop the duplicate and save {saved}.",
        tie=Step(Verdict.TIED, True, drop=Drop.EQUAL_COPIES | Drop.SHARED_TARGETS),
        untie=_STORE_TARGETS,
        load=Load.SHARE,
    ),
    Verdict.UNTIED: VerdictRow(
        "two real matrices", False, "32",
        "Nothing to do: the head and the embedding are two real matrices.",
        tie=_KEEP_ONE,
        untie=Step(Verdict.UNTIED, False, done=Done.ALWAYS),
        load=Load.AS_STORED,
    ),
    Verdict.TIEABLE: VerdictRow(
        "consistent; tying would lose nothing", False, "32",
        "Consistent as is; `tieconv tie {path} OUT` would save {saved} without changing outputs.",
        tie=Step(Verdict.TIED, True, drop=Drop.EQUAL_COPIES | Drop.SHARED_TARGETS),
        untie=Step(Verdict.TIEABLE, False, done=Done.ALWAYS),
        load=Load.AS_STORED,
    ),
    Verdict.CONFLICT: VerdictRow(
        "the flag ties, the two differ: runtimes disagree on the head", True, "31",
        "Run `tieconv untie {path} OUT` to keep both matrices (the head transformers uses), "
        "or `tieconv tie --keep embed|head` to choose one. {agreement}",
        tie=_KEEP_ONE,
        untie=Step(Verdict.UNTIED, False, "keep both matrices as stored{stored} and untie", store=Store.TARGETS),
        load=Load.WARN,
        load_message="{path}: the config ties but {head} and {embed} differ; runtimes disagree on which to use "
                     "(transformers and vLLM use the stored head, MLX-LM the embedding)",
        advised_result=Verdict.UNTIED,
    ),
    Verdict.HEAD_MISSING: VerdictRow(
        "the flag unties, no head stored: loaders fill it differently", True, "31",
        "If the model was trained tied, run `tieconv tie {path} OUT --assume-tied`. {agreement}",
        tie=Step(Verdict.TIED, True, "repair the config: the model was trained tied (--assume-tied)",
                 keep=Member.EMBED, refusal=Refusal(
                     "{path}: the config unties but no head is stored; setting the flag makes the model use its "
                     "embedding as its head, right only if it was trained tied and its config was saved wrong: "
                     "pass --assume-tied if that is so", lifted_by="assume_tied")),
        untie=Step(None, False, refusal=Refusal(
            "{path}: there is no head to keep (the config unties and none is stored); "
            "`tieconv tie --assume-tied` is the other way out")),
        load=Load.REFUSE,
        load_message="{path}: the config unties but no head ({head}) is stored; pass tie=True to fill it from "
                     "the embedding",
        advised_result=Verdict.TIED,
    ),
    Verdict.EMBED_MISSING: VerdictRow(
        "no embedding stored: lost unless the flag ties", True, "31",
        "Run `tieconv tie {path} OUT` to store the head's matrix as the embedding.",
        tie=Step(Verdict.TIED, True, "store the head's matrix as the embedding and tie", keep=Member.HEAD,
                 drop=Drop.HEAD),
        untie=Step(Verdict.TIEABLE, False, "store the embedding as a copy of the head and untie",
                   store=Store.EMBED_FROM_HEAD, refusal=Refusal(
                       "{path}: the config unties and the embedding {embed} is not stored: it is lost",
                       only_if_flag=False)),
        load=Load.EMBED_FROM_HEAD,
    ),
    Verdict.NO_HEAD: VerdictRow(
        "the model has no output head: nothing to tie", False, "32",
        "Nothing to tie: the model has no output head.",
        tie=Step(None, True, refusal=Refusal("{path}: the model has no output head; there is nothing to tie")),
        untie=Step(None, False, refusal=Refusal("{path}: the model has no output head; there is nothing to untie")),
        load=Load.AS_STORED,
    ),
    Verdict.UNDECIDED: VerdictRow(
        "both stored, not compared: compare to decide", True, "33",
        "Run again without --no-compare to compare the two matrices.",
        tie=Step(None, True, refusal=_NOT_COMPARED),
        untie=Step(None, False, refusal=_NOT_COMPARED),
        load=Load.AS_STORED,
    ),
}

# verdicts `--check` fails on: the flag and the data disagree, bytes are wasted, or nothing can be vouched for
PROBLEM_VERDICTS = frozenset(v for v, row in TABLE.items() if row.check_fails)


def row(verdict: str) -> VerdictRow:
    """The table's row for `verdict` (a `Verdict` or its string)."""
    return TABLE[Verdict(verdict)]


def listed(verdicts: Iterable[str]) -> str:
    """ "duplicated, conflict or undecided": verdicts in a sentence, in the table's order."""
    chosen = set(verdicts)
    names = [v.value for v in TABLE if v in chosen]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
