from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import tieconv
from tieconv.cli import main

from tieconv.inspection.verdicts import TABLE, Verdict

from .conftest import FIXTURES
from .helpers import VERDICT_FIXTURES

SCHEMA_KEYS = {
    "schema_version", "path", "layout", "files", "verdict", "embed", "head", "tie_flag", "identical",
    "equal_after_cast", "parameters", "bytes", "reclaimable_keys", "tie_map", "architecture", "config",
    "reason", "advice", "notes", "downloaded_bytes", "tie_group", "runtimes",
}


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_version_and_help():
    assert run("--version").output.strip() == f"tieconv, version {tieconv.__version__}"
    out = run("--help").output
    assert "Examples:" in out and "inspect" in out
    out = run("inspect", "-h").output
    for option in ("--json", "--check", "--embed", "--head", "--no-compare", "--debug"):
        assert option in out
    assert "tieconv inspect fixtures/llama-duplicated" in out


def test_human_output():
    result = run("inspect", FIXTURES / "llama-duplicated")
    assert result.exit_code == 0
    assert "duplicated" in result.output and "lm_head.weight" in result.output
    assert "reclaimable 2.0 KB" in result.output


def test_json_schema():
    result = run("inspect", FIXTURES / "llama-untied", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert set(doc) == SCHEMA_KEYS
    assert doc["schema_version"] == 2 and doc["verdict"] == "untied"
    assert doc["tie_group"] == {"source": "model.embed_tokens.weight", "targets": ["lm_head.weight"]}
    assert set(doc["embed"]) == {"key", "stored", "shape", "dtype", "file", "nbytes"}
    assert doc["embed"]["dtype"] == "BF16" and doc["embed"]["shape"] == [64, 16]
    assert set(doc["tie_flag"]) == {"value", "source", "forced", "top_level", "sub_config", "path", "governs",
                                    "also_changes"}
    assert set(doc["bytes"]) == {"total", "reclaimable"} and set(doc["parameters"]) == {"stored", "unique"}
    assert doc == tieconv.inspect(FIXTURES / "llama-untied").to_dict() | {"path": str(FIXTURES / "llama-untied")}


@pytest.mark.parametrize("verdict", list(Verdict))
def test_check_exit_status_follows_the_verdict_table(verdict):
    name = VERDICT_FIXTURES[verdict]  # every verdict has a checkpoint here (KeyError otherwise)
    args = ["--no-compare"] if verdict == "undecided" else []
    result = run("inspect", FIXTURES / name, "--check", "--json", *args)
    assert json.loads(result.output)["verdict"] == verdict
    assert result.exit_code == (1 if TABLE[verdict].check_fails else 0)
    assert run("inspect", FIXTURES / name, *args).exit_code == 0  # without --check: never a failure


@pytest.mark.parametrize("name,code", [("llama-tied", 0), ("llama-duplicated", 1), ("llama-head-missing", 1)])
def test_check_exit_codes(name, code):
    assert run("inspect", FIXTURES / name, "--check").exit_code == code


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run("inspect", tmp_path / "missing")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "missing") in lines[0] and "Traceback" not in result.output


def test_internal_error_is_exit_70(monkeypatch):
    import tieconv.inspection.inspector

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(tieconv.inspection.inspector, "inspect", boom)
    result = run("inspect", FIXTURES / "llama-tied")
    assert result.exit_code == 70 and "internal error" in result.output and "Traceback" not in result.output
    result = run("inspect", FIXTURES / "llama-tied", "--debug")
    assert isinstance(result.exception, RuntimeError)


def test_explicit_keys_on_the_command_line(tmp_path):
    result = run("inspect", FIXTURES / "meta-llama" / "consolidated.00.pth", "--embed", "tok_embeddings.weight",
                 "--head", "output.weight", "--json")
    assert json.loads(result.output)["head"]["key"] == "output.weight"


def test_help_lists_commands_in_whole_sentences():
    result = CliRunner().invoke(main, ["--help"])
    commands = result.output.split("Commands:")[1].strip().splitlines()
    assert len(commands) == 5
    for line in commands:
        assert line.rstrip().endswith(".") and "..." not in line, line
    assert "duplicated, conflict, head-missing, embed-missing or undecided" in " ".join(result.output.split())
