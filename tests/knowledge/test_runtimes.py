"""The runtime rules (tieconv/knowledge/runtimes.py) against the runtime suite's committed observations, and the
runtime table in every report.

bench/runtimes.py ran the real runtimes and wrote raw numbers to bench/runtimes-observations.json.
Here the head each runtime used is derived from those numbers alone, and the hand-written rules must
predict every observation: a rule changed without new observations, or new observations that
contradict a rule, fails.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import tieconv
from tieconv.knowledge import runtimes
from tieconv.cli import main
from tieconv.knowledge.runtimes import EMBEDDING, ERROR, RANDOM, STORED, UNKNOWN, UNSUPPORTED, Case
from ..helpers import finish_gguf

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
OBSERVATIONS = json.loads((ROOT / "bench" / "runtimes-observations.json").read_text())
TOLERANCE = OBSERVATIONS["tolerance"]
RUNTIME_NAMES = {"transformers": "transformers", "vllm": "vLLM", "mlx-lm": "MLX-LM", "llama.cpp": "llama.cpp",
                 "torchtune": "torchtune"}


def _state_key(case: dict) -> str:
    """The rules' state key for a recorded case, as tieconv.knowledge.runtimes.case_of builds it from a report
    (the suite's embed-missing cases all tie, so they need no `/unties`)."""
    verdict, source = case["verdict"], case["flag_source"]
    if source == "none":
        return verdict + "/no-flag"
    if source == "class default":
        return verdict + "/class-default"
    return verdict


def case_input(obs: dict) -> str:
    return OBSERVATIONS["cases"][obs["case"]]["input"]


def _prediction(obs: dict):
    case = OBSERVATIONS["cases"][obs["case"]]
    rt = RUNTIME_NAMES[obs["runtime"]]
    rows = runtimes.predict_case(Case(_state_key(case), case["architecture"] or "", case["input"]),
                                 {rt: obs["version"], "transformers": obs["baseline"].split()[1]})
    return next(r for r in rows if r.runtime == rt)


@pytest.mark.parametrize("obs", OBSERVATIONS["observations"], ids=lambda o: f"{o['runtime']}-{o['case']}")
def test_rules_predict_every_observation(obs):
    row = _prediction(obs)
    used = runtimes.heads_observed(obs, TOLERANCE)
    assert row.head in used, f"rule says {row.head!r} ({row.note}); the numbers say {sorted(used)}"
    assert row.basis == "observed", "an observed case must be covered by a table with basis `observed`"
    observed_equal = obs["max_diff_transformers"] is not None and obs["max_diff_transformers"] <= TOLERANCE
    if obs["runtime"] != "transformers" and case_input(obs) == "hf":  # a GGUF file has no transformers row
        assert row.equals_transformers == observed_equal


def test_the_recorded_numbers_are_the_raw_ones():
    """Every difference in the file is recomputed from the log-probabilities it records."""
    for obs in OBSERVATIONS["observations"]:
        case = OBSERVATIONS["cases"][obs["case"]]
        ref = OBSERVATIONS["baselines"][obs["baseline"]][case.get("source_case", obs["case"])]
        for field, key in (("max_diff_stored", "stored"), ("max_diff_embedding", "embedding"),
                           ("max_diff_transformers", "logprobs")):
            lp, other = obs["logprobs"], ref.get(key)
            expected = None if lp is None or other is None or None in lp else max(
                abs(a - b) for a, b in zip(lp, other))
            if expected is not None and math.isnan(expected):  # vLLM's uninitialised memory can hold NaN
                assert math.isnan(obs[field])
                continue
            assert obs[field] == pytest.approx(expected, rel=1e-6, abs=2e-6), (obs["runtime"], obs["case"], field)
        assert (obs["logprobs"] is None) == (obs["error"] is not None)


def test_the_two_references_are_told_apart():
    """Stored head and embedding give log-probs far apart wherever they differ, so the tolerance decides."""
    for label, cases in OBSERVATIONS["baselines"].items():
        for name, ref in cases.items():
            if ref.get("stored") and ref.get("embedding") and OBSERVATIONS["cases"][name]["state"] in (
                    "untied", "conflict", "untied-flag-absent"):
                gap = max(abs(a - b) for a, b in zip(ref["stored"], ref["embedding"]))
                assert gap > 100 * TOLERANCE, (label, name, gap)


def test_every_observed_table_has_its_observations():
    """A table may claim `observed` only for architectures the suite ran, in its version range."""
    seen = {(RUNTIME_NAMES[o["runtime"]], OBSERVATIONS["cases"][o["case"]]["architecture"] or "", o["version"])
            for o in OBSERVATIONS["observations"]}
    for rt in runtimes.RUNTIMES:
        for table in rt.tables:
            if table.basis != "observed":
                continue
            for family in table.observed_families:
                hits = [v for name, arch, v in seen if name == rt.name and (arch == family or table.inputs != ("hf",))
                        and runtimes._in_range(v, table.versions)]
                assert hits, f"{rt.name} {table.versions} claims observations for {family} that the file lacks"


def test_conflict_is_where_runtimes_disagree():
    """The headline, from the numbers: on a conflict Llama, transformers and vLLM use the stored head while
    MLX-LM silently uses the embedding."""
    heads = {o["runtime"]: runtimes.heads_observed(o, TOLERANCE) for o in OBSERVATIONS["observations"]
             if o["case"] == "llama-conflict"}
    assert heads["transformers"] == {STORED}
    assert heads["mlx-lm"] == {EMBEDDING}
    assert heads["vllm"] == {STORED}


# ---------------------------------------------------------------- the table in every report


def _gguf(tmp_path: Path, head: bool) -> Path:
    import gguf
    import numpy as np

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((64, 16), dtype=np.float32))
    if head:
        writer.add_tensor("output.weight", rng.standard_normal((64, 16), dtype=np.float32))
    finish_gguf(writer)
    return path


FIELDS = {"runtime", "head", "equals_transformers", "versions", "basis", "source", "installed", "note"}


@pytest.mark.parametrize("layout, make, expected", [
    ("hf-safetensors", lambda tmp: FIXTURES / "llama-conflict",
     {"transformers": STORED, "vLLM": STORED, "MLX-LM": EMBEDDING, "TorchChat": STORED}),
    ("safetensors-file", lambda tmp: FIXTURES / "single-files" / "llama-untied.safetensors",
     {"transformers": UNSUPPORTED, "MLX-LM": UNSUPPORTED}),
    ("torch-file", lambda tmp: FIXTURES / "meta-llama" / "consolidated.00.pth",
     {"transformers": UNSUPPORTED, "TorchChat": STORED}),
    ("gguf", lambda tmp: _gguf(tmp, head=False), {"llama.cpp": EMBEDDING, "MLX-LM": UNSUPPORTED}),
])
def test_inspect_reports_runtimes_for_every_layout(tmp_path, layout, make, expected):
    report = tieconv.inspect(make(tmp_path))
    assert report.layout == layout
    rows = report.to_dict()["runtimes"]
    assert [r["runtime"] for r in rows] == [rt.name for rt in runtimes.RUNTIMES]
    for row in rows:
        assert set(row) == FIELDS
        assert row["head"] in runtimes.HEADS
        assert row["basis"] in ("observed", "source", "none")
    heads = {r["runtime"]: r["head"] for r in rows}
    assert {k: heads[k] for k in expected} == expected
    out = CliRunner().invoke(main, ["inspect", str(make(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "runtimes" in out.output and "TorchChat" in out.output


def test_human_output_names_heads_and_agreement():
    out = CliRunner().invoke(main, ["inspect", str(FIXTURES / "llama-conflict")])
    lines = {ln.split()[0]: ln for ln in out.output.splitlines() if ln.startswith("  ")}
    assert "stored head" in lines["transformers"] and "(reference)" in lines["transformers"]
    assert "embedding" in lines["MLX-LM"] and "differs" in lines["MLX-LM"]
    assert "observed" in lines["vLLM"]


def test_no_head_and_undecided_have_no_table():
    assert tieconv.inspect(FIXTURES / "bert-encoder").runtimes == []
    assert tieconv.inspect(FIXTURES / "llama-conflict", compare=False).runtimes == []


# ---------------------------------------------------------------- versions pick the table


def _row(name: str, case: Case, version: str | None):
    return next(r for r in runtimes.predict_case(case, {name: version}) if r.runtime == name)


def test_installed_version_picks_the_table():
    conflict = Case("conflict", "LlamaForCausalLM", "hf")
    assert _row("transformers", conflict, "5.24.0").head == STORED
    old = _row("transformers", conflict, "4.57.1")
    assert (old.head, old.versions, old.basis) == (EMBEDDING, ">=4.0,<5.0", "source")
    assert _row("vLLM", conflict, "0.32.0+cpu").versions == ">=0.32,<0.33"


def test_version_outside_every_range_says_so():
    row = _row("vLLM", Case("conflict", "LlamaForCausalLM", "hf"), "0.9.2")
    assert row.head == UNKNOWN and row.equals_transformers is None
    assert "0.9.2 is outside every range" in row.note and ">=0.32,<0.33" in row.note


def test_the_installed_version_is_read_here(monkeypatch):
    monkeypatch.setattr(runtimes, "installed_version", lambda name: {"MLX-LM": "0.1.0"}.get(name))
    rows = {r.runtime: r for r in tieconv.inspect(FIXTURES / "llama-conflict").runtimes}
    assert rows["MLX-LM"].installed == "0.1.0" and rows["MLX-LM"].head == UNKNOWN
    assert rows["vLLM"].installed is None and rows["vLLM"].head == STORED


def test_class_default_flag_refines_the_state():
    """MLX-LM's Llama defaults to tying when config.json leaves the flag out; transformers' does not."""
    case = Case("untied/class-default", "LlamaForCausalLM", "hf")
    rows = {r.runtime: r for r in runtimes.predict_case(case)}
    assert rows["transformers"].head == STORED
    assert rows["MLX-LM"].head == EMBEDDING and rows["MLX-LM"].equals_transformers is False
    assert rows["vLLM"].head == STORED and rows["vLLM"].equals_transformers is True


# ---------------------------------------------------------------- advice


def test_advice_names_who_disagrees_and_who_agrees_after(monkeypatch):
    monkeypatch.setattr(runtimes, "installed_version", lambda name: None)
    report = tieconv.inspect(FIXTURES / "llama-conflict")
    today = runtimes.agreement_advice(report)
    assert today.startswith("Runtimes disagree today:")
    assert "MLX-LM uses the embedding" in today and "SGLang uses the embedding" in today
    assert "torchtune: error" in today and "vLLM" not in today
    assert "transformers uses the stored head" in today
    after = runtimes.agreement_advice(report, after="untied")
    assert after.endswith("After the conversion (untied) they all use the same head.")
    assert "Runtimes disagree today" in report.advice


def test_advice_for_gemma_says_which_still_differ(monkeypatch):
    monkeypatch.setattr(runtimes, "installed_version", lambda name: None)
    rows = runtimes.predict_case(Case("untied", "GemmaForCausalLM", "hf"))
    still = {r.runtime: r.head for r in runtimes.disagreeing(rows)}
    assert still["MLX-LM"] == ERROR and still["llama.cpp"] == EMBEDDING


def test_head_missing_advice_lists_each_runtime(monkeypatch):
    monkeypatch.setattr(runtimes, "installed_version", lambda name: None)
    report = tieconv.inspect(FIXTURES / "llama-head-missing")
    assert report.runtimes[0].head == RANDOM
    text = runtimes.agreement_advice(report, after="tied")
    assert "vLLM: random" in text and "MLX-LM: error" in text and "llama.cpp uses the embedding" in text
    assert text.endswith("they all use the same head.")


def test_readme_matrix_comes_from_the_observations():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_runtimes", ROOT / "bench" / "runtimes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- runtime-matrix -->\n", 1)[1].split("<!-- /runtime-matrix -->", 1)[0]
    assert block.strip() == bench.matrix_markdown(OBSERVATIONS)
