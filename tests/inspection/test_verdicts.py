"""The verdict table: one row per verdict, and the README, the help and the report agree with it."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import tieconv
from tieconv.cli import main
from tieconv.inspection.report import PROBLEM_VERDICTS, Report
from tieconv.inspection.verdicts import TABLE, Done, Member, Refusal, Verdict, listed

from ..conftest import FIXTURES, ROOT

# the strings the JSON, the CLI and `--check` have always used: never renamed
VERDICT_STRINGS = ["tied", "duplicated", "untied", "tieable", "conflict", "head-missing", "embed-missing", "no-head",
                   "undecided"]


def test_every_verdict_has_one_row_and_keeps_its_string():
    assert [v.value for v in Verdict] == VERDICT_STRINGS
    assert list(TABLE) == list(Verdict)
    for v in Verdict:
        assert v == v.value and str(v) == f"{v}" == v.value and json.dumps(v) == f'"{v.value}"'
    assert PROBLEM_VERDICTS == {"duplicated", "conflict", "head-missing", "embed-missing", "undecided"}
    assert PROBLEM_VERDICTS == {v for v, row in TABLE.items() if row.check_fails}


def test_rows_are_consistent():
    for v, row in TABLE.items():
        assert row.tie.flag is True and row.untie.flag is False, v
        for step in (row.tie, row.untie):
            always_refused = step.refusal is not None and step.refusal.lifted_by is None and \
                step.refusal.only_if_flag is None
            assert (step.result is None) == always_refused, v  # a step that can go ahead says what it gives
            assert step.done is Done.NEVER or step.refusal is None, v
        if row.tie.keep is Member.CHOSEN:  # two different matrices: --keep chooses, and nothing else lifts it
            assert row.tie.refusal == Refusal(row.tie.refusal.why, lifted_by="keep")
        assert ("{agreement}" in row.advice) == (row.advised_result is not None), v


def test_a_report_holds_a_verdict_and_refuses_an_unknown_string():
    report = tieconv.inspect(FIXTURES / "llama-duplicated")
    assert report.verdict is Verdict.DUPLICATED and report.verdict == "duplicated" and report.problem
    assert report.to_dict()["verdict"] == "duplicated" and type(json.loads(json.dumps(report.to_dict()))["verdict"]) is str
    import dataclasses

    assert dataclasses.replace(report, verdict="tied").verdict is Verdict.TIED
    with pytest.raises(ValueError):
        dataclasses.replace(report, verdict="mostly-tied")
    assert isinstance(report, Report)


def _readme_table(heading: str) -> dict[str, list[str]]:
    """The README table whose header starts with `heading`: verdict -> its cells."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in re.findall(r"`([a-z-]+)`", cells[0]):
            rows[name] = cells[1:]
    return rows


def test_readme_verdict_table_says_what_check_does():
    rows = _readme_table("| verdict | flag | embedding / head stored | meaning | `--check` |")
    assert list(rows) == VERDICT_STRINGS
    for v, cells in rows.items():
        assert cells[-1] == ("fails" if TABLE[Verdict(v)].check_fails else "passes"), v


def test_readme_tie_untie_table_refuses_where_the_table_refuses():
    rows = _readme_table("| input verdict | `tie` | `untie` |")
    assert set(rows) == set(VERDICT_STRINGS)
    for v, (tie_cell, untie_cell) in rows.items():
        row = TABLE[Verdict(v)]
        if v in ("untied", "conflict"):  # one README row for two verdicts; its untie cell names each
            untie_cell = untie_cell.split(f"`{v}`: ", 1)[1].split(";")[0]
        assert ("refused" in tie_cell) == (row.tie.refusal is not None), (v, tie_cell)
        assert ("refused" in untie_cell) == (row.untie.refusal is not None), (v, untie_cell)
        assert ("nothing to do" in untie_cell) == (row.untie.done is Done.ALWAYS), (v, untie_cell)


def test_help_says_which_verdicts_fail_check():
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert f"1 --check found a problem (verdict {listed(PROBLEM_VERDICTS)})" in top
    assert listed(PROBLEM_VERDICTS) == "duplicated, conflict, head-missing, embed-missing or undecided"
    inspect_help = CliRunner().invoke(main, ["inspect", "--help"]).output
    for v, row in TABLE.items():
        marked = re.search(rf"^\s+{re.escape(v.value)}( \*)?\s+{re.escape(row.meaning)}$", inspect_help, re.M)
        assert marked is not None, v
        assert bool(marked.group(1)) == row.check_fails, v
