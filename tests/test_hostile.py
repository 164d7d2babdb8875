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


# ---------------------------------------------------------------- through the API

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import tieconv  # noqa: E402
from tieconv.errors import InputError, OutputError, UnsupportedCheckpointError  # noqa: E402

from .conftest import FIXTURES  # noqa: E402
from .hostile_cases import gguf_empty_strings  # noqa: E402
from .formats.test_gguf_file import write_gguf  # noqa: E402


def test_load_state_dict_refuses_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", head="same")
    with pytest.raises(UnsupportedCheckpointError, match="GGUF tensors are llama.cpp types"):
        tieconv.load_state_dict(path)


def test_load_state_dict_refuses_a_dtype_torch_lacks(tmp_path):
    header = {"model.embed_tokens.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "x": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [16, 19]}}
    text = json.dumps(header).encode()
    (tmp_path / "f6.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(19))
    assert tieconv.inspect(tmp_path / "f6.safetensors").verdict == "tied"  # reading it is fine
    with pytest.raises(UnsupportedCheckpointError, match="'x' is stored as F6_E2M3"):
        tieconv.load_state_dict(tmp_path / "f6.safetensors")


def test_a_file_truncated_while_its_ranges_are_copied_aborts_the_write(tmp_path):
    from tieconv.conversion.convert import execute

    src = tmp_path / "in"
    shutil.copytree(FIXTURES / "llama-duplicated", src)
    out = tmp_path / "out"
    p, report = tieconv.plan("tie", src, out)
    with open(src / "model.safetensors", "r+b") as f:  # the copy reads fewer bytes than planned
        f.truncate(os.fstat(f.fileno()).st_size // 2)
    with pytest.raises(tieconv.TieconvError):
        execute(p, report, verify="none")
    assert not out.exists() and not any(n.name.startswith("out.") for n in tmp_path.iterdir())


@pytest.mark.parametrize("link", [False, True])
def test_a_shard_truncated_after_planning_aborts_the_write(tmp_path, link):
    from tieconv.conversion.convert import execute

    src = tmp_path / "in"
    shutil.copytree(FIXTURES / "llama-untied-sharded", src)
    out = tmp_path / "out"
    p, report = tieconv.plan("untie", src, out, force=True, link=link)
    unchanged = [f.unchanged_from for f in p.files if f.unchanged_from]
    assert unchanged
    with open(src / unchanged[0], "r+b") as f:  # the shard shrinks between planning and copying
        f.truncate(os.fstat(f.fileno()).st_size - 8)
    with pytest.raises(OutputError, match="changed during the conversion"):
        execute(p, report, verify="none")
    assert not out.exists() and not any(n.name.startswith("out.") for n in tmp_path.iterdir())


@pytest.mark.parametrize("value,reading", [("false", False), (1, True), ("True", True), (0, False)])
def test_tie_and_untie_write_a_boolean_for_a_flag_spelled_otherwise(tmp_path, value, reading):
    src = tmp_path / "in"
    shutil.copytree(FIXTURES / "llama-duplicated", src)
    config = json.loads((src / "config.json").read_text())
    config["tie_word_embeddings"] = value
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=f"tie_word_embeddings is {json.dumps(value)} .*transformers refuses"):
        tieconv.inspect(src)
    for action, flag in (("tie", True), ("untie", False)):
        result = getattr(tieconv, action)(src, tmp_path / action)
        assert json.loads((tmp_path / action / "config.json").read_text())["tie_word_embeddings"] is flag
        assert any(f"read as {json.dumps(reading)}" in w for w in result.warnings)
        assert any("tie_word_embeddings was" in w for w in result.plan.to_dict()["warnings"])


def test_a_flag_that_spells_no_boolean_is_refused_by_tie(tmp_path):
    src = tmp_path / "in"
    shutil.copytree(FIXTURES / "llama-duplicated", src)
    config = json.loads((src / "config.json").read_text())
    config["tie_word_embeddings"] = "maybe"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="spells no boolean"):
        tieconv.tie(src, tmp_path / "out")


def test_gguf_metadata_is_stepped_over_not_materialised(tmp_path):
    """The red-team's file: two million empty strings. Refused by count, in bounded memory."""
    import resource

    args = gguf_empty_strings(tmp_path, False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(tieconv.TieconvError, match="strings"):
        tieconv.inspect(args[1])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KB: well under 200 MB


# ---------------------------------------------------------------- never the network for a local path


def _backbone_model(folder):
    """An RT-DETR-style config naming a backbone checkpoint on the Hub, as transformers writes it."""
    from transformers import RTDetrConfig

    folder.mkdir()
    config = RTDetrConfig().to_dict()
    config.update(architectures=["RTDetrForObjectDetection"], backbone="org/some-backbone", backbone_config=None,
                  use_pretrained_backbone=True, use_timm_backbone=False)
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(FIXTURES / "llama-tied" / "model.safetensors", folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("endpoint", ["stalled", "unreachable"])
def test_local_inspect_never_contacts_the_hub(tmp_path, endpoint):
    folder = _backbone_model(tmp_path / "detr")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    connections = []
    if endpoint == "stalled":  # accepts, never answers
        server.listen(16)

        def accept():
            while True:
                try:
                    connections.append(server.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
    else:
        server.close()  # nothing listens on the port
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    try:
        outcome = run(["inspect", str(folder)], address_space_bytes=ADDRESS_SPACE, timeout=TIMEOUT, env=env)
    finally:
        server.close()
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert connections == []


def test_offline_builds_are_serialised_and_restore_the_flag():
    from huggingface_hub import constants

    from tieconv.knowledge import architecture

    before = constants.HF_HUB_OFFLINE
    with architecture._offline():
        assert constants.HF_HUB_OFFLINE is True
        got: list[bool] = []
        other = threading.Thread(target=lambda: got.append(architecture._OFFLINE.acquire(timeout=0.1)))
        other.start()
        other.join()
        assert got == [False]  # a concurrent build in another thread waits for this one (re-entrant in this one)
    assert constants.HF_HUB_OFFLINE == before
