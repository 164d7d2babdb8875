"""Hostile inputs (issue 14): each ends in exit 2 and one line naming the file (or succeeds where the input
is actually fine), in a subprocess under a 4 GiB address-space limit, reading nothing outside the model
folder and never quoting file contents. Time and memory per case: `python bench/bench_hostile.py`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .hostile_cases import CASES, Outcome, run

ADDRESS_SPACE = 4 << 30
TIMEOUT = 180  # generous: the machine is shared; the bench reports the real figures


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Every case built, then run three at a time (each its own process under RLIMIT_AS)."""
    jobs = {}
    for case in CASES:
        tmp = tmp_path_factory.mktemp("hostile")
        env = {"XDG_CACHE_HOME": str(tmp / "fresh-cache")} if case.fresh_cache else None
        jobs[case.name] = (case.build(tmp, False), env)
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run, args, address_space_bytes=ADDRESS_SPACE, timeout=TIMEOUT, env=env)
                   for name, (args, env) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case, outcomes):
    outcome = outcomes[case.name]
    assert outcome.code is not None, f"{case.name}: still running after {TIMEOUT} s"
    if case.expect == "refuse":
        assert outcome.code == 2, (outcome.code, outcome.stderr[-2000:])
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tieconv: error: "), outcome.stderr[-2000:]
        assert case.says in lines[0], lines[0]
    else:
        assert outcome.code == 0, (outcome.code, outcome.stderr[-2000:])
        assert case.says in outcome.stdout
    for secret in case.never_says:
        assert secret not in outcome.stderr + outcome.stdout
