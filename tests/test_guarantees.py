"""The guarantees of the README's "Guarantees" section, each tested for real (see the README for counts)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tieconv
from tieconv.errors import UnsafePickleError

from .conftest import FIXTURES, ROOT

KILL_TRIALS = 24


def snapshot(path: Path) -> dict:
    """sha256, size and mtime of every file below path (links are recorded, not followed)."""
    out = {}
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            st = p.stat()
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def cli(*args, env=None, preexec_fn=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tieconv.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn, timeout=timeout)


# ---------------------------------------------------------------- 1. input never modified


@pytest.mark.parametrize("args", [
    ["inspect", "{src}"], ["inspect", "{src}", "--json", "--check"], ["tie", "{src}", "{out}"],
    ["untie", "{src}", "{out}"], ["tie", "{src}", "{out}", "--link"], ["tie", "{src}", "{src}/inside"],
    ["untie", "{src}", "{out}", "--format", "torch"], ["scan", "{src}"],
])
@pytest.mark.parametrize("fixture", ["llama-duplicated", "llama-untied-sharded", "gpt2-bin", "meta-llama"])
def test_input_never_modified(tmp_path, fixture, args):
    src = tmp_path / "in"
    shutil.copytree(FIXTURES / fixture, src)
    before = snapshot(src)
    cli(*[a.format(src=src, out=tmp_path / "out") for a in args])
    assert snapshot(src) == before
    if (tmp_path / "out").exists() and "--link" in args:
        assert snapshot(src) == before  # a linked shard shares the inode; nothing wrote to it


# ---------------------------------------------------------------- 2. all or nothing under SIGKILL


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory):
    """A sharded and a single-file duplicated checkpoint of a few hundred MB."""
    base = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(32000, 2048, generator=g).to(torch.bfloat16)  # 131 MB
    layers = {f"model.layers.{i}.mlp.up_proj.weight": torch.full((5632, 2048), float(i), dtype=torch.bfloat16)
              for i in range(4)}  # 4 x 23 MB
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048,
              "intermediate_size": 5632, "num_hidden_layers": 4, "num_attention_heads": 16,
              "tie_word_embeddings": True}
    single = base / "single"
    single.mkdir()
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": embed.clone(), **layers},
              single / "model.safetensors", metadata={"format": "pt"})
    (single / "config.json").write_text(json.dumps(config))
    sharded = base / "sharded"
    sharded.mkdir()
    shards = [{"model.embed_tokens.weight": embed}, dict(list(layers.items())[:2]),
              {**dict(list(layers.items())[2:]), "lm_head.weight": embed.clone()}]
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-00003.safetensors"
        save_file(shard, sharded / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(config))
    return {"single": single, "sharded": sharded}


def _verify_complete(src: Path, out: Path) -> None:
    report = tieconv.inspect(out)
    assert report.verdict == "tied"
    ckpt = report.checkpoint
    source = tieconv.inspect(src).checkpoint
    assert set(ckpt.tensors) == set(source.tensors) - {"lm_head.weight"}
    for key in ckpt.tensors:  # full verification: every byte
        a = hashlib.sha256()
        for chunk in ckpt.iter_bytes(key):
            a.update(chunk)
        b = hashlib.sha256()
        for chunk in source.iter_bytes(key):
            b.update(chunk)
        assert a.digest() == b.digest(), key


def test_sigkill_leaves_nothing_or_a_complete_output(tmp_path, big_inputs):
    started = time.monotonic()
    rng = random.Random(1234)
    before = {k: snapshot(v) for k, v in big_inputs.items()}
    outcomes = {"absent": 0, "complete": 0}
    for trial in range(KILL_TRIALS):
        kind = ("single", "sharded")[trial % 2]
        action = "tie" if trial % 4 < 2 else "untie"
        src = big_inputs[kind]
        out = tmp_path / f"out-{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "tieconv.cli", action, str(src), str(out), "--quiet"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not list(out.parent.glob(f"{out.name}.tieconv-tmp-{proc.pid}-*")) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            outcomes["complete"] += 1
            if action == "tie":
                _verify_complete(src, out)
            else:
                assert tieconv.inspect(out).verdict == "tieable"
        else:
            outcomes["absent"] += 1
        leftovers = [p for p in tmp_path.glob(f"out-{trial}.tieconv-*") if not p.name.endswith(".tieconv-lock")]
        assert all(f"-{proc.pid}-" in p.name for p in leftovers)
        if leftovers and trial < 4:  # a later run into the same OUT removes a dead process's leftovers
            shutil.rmtree(out, ignore_errors=True)
            assert cli("tie", src, out, "--quiet").returncode == 0
            assert not list(tmp_path.glob(f"out-{trial}.tieconv-tmp-*"))
            assert not list(tmp_path.glob(f"out-{trial}.tieconv-own-*"))
    assert {k: snapshot(v) for k, v in big_inputs.items()} == before
    print(f"SIGKILL trials: {outcomes}")
    assert outcomes["absent"] > 0  # kills did land mid-write
    assert time.monotonic() - started < 120


def _record(folder, name, pid, tmp_name, tmp_path):
    doc = {"magic": "tieconv ownership record v1", "pid": pid, "tmp": tmp_name,
           "ino": (folder / tmp_name).lstat().st_ino, "state": "writing"}
    (folder / name).write_text(json.dumps(doc))


def test_cleanup_removes_only_what_dead_tieconv_processes_recorded(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"out.tieconv-tmp-{sleeper.pid}-aaaa"
        live.mkdir()
        _record(tmp_path, f"out.tieconv-own-{sleeper.pid}-aaaa", sleeper.pid, live.name, tmp_path)
        dead = tmp_path / "out.tieconv-tmp-999999999-bbbb"
        dead.mkdir()
        _record(tmp_path, "out.tieconv-own-999999999-bbbb", 999999999, dead.name, tmp_path)
        # merely named like temporaries, with no record: a user's files, never touched
        users = [tmp_path / "out.tieconv-tmp-999999", tmp_path / "out.tieconv-tmp-old-999999"]
        users[0].write_text("my input")
        users[1].mkdir()
        # a record naming a path whose inode is not the one recorded (replaced since): not touched
        swapped = tmp_path / "out.tieconv-tmp-999999997-cccc"
        swapped.write_text("the user's now")
        doc = {"magic": "tieconv ownership record v1", "pid": 999999997, "tmp": swapped.name,
               "ino": swapped.stat().st_ino + 7919, "state": "writing"}
        (tmp_path / "out.tieconv-own-999999997-cccc").write_text(json.dumps(doc))
        victim = tmp_path / "victim"
        victim.mkdir()
        (victim / "keep.txt").write_text("x")
        planted = tmp_path / "out.tieconv-tmp-999999998-dddd"
        planted.symlink_to(victim)  # a recorded link is removed, never followed
        _record(tmp_path, "out.tieconv-own-999999998-dddd", 999999998, planted.name, tmp_path)
        tieconv.tie(FIXTURES / "llama-duplicated", tmp_path / "out")
        assert live.exists() and (tmp_path / f"out.tieconv-own-{sleeper.pid}-aaaa").exists()
        assert not dead.exists() and not planted.exists() and not (tmp_path / "out.tieconv-own-999999999-bbbb").exists()
        assert users[0].read_text() == "my input" and users[1].is_dir() and swapped.read_text() == "the user's now"
        assert (victim / "keep.txt").read_text() == "x"
    finally:
        sleeper.kill()


# ---------------------------------------------------------------- 3. full disks and size limits


def test_file_size_limit_is_a_clean_efbig(tmp_path, big_inputs):
    limit = 50 * 1024 * 1024

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = snapshot(big_inputs["single"])
    result = cli("tie", big_inputs["single"], tmp_path / "out", "--quiet", preexec_fn=cap)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "needs" in line and "bytes" in line and "Traceback" not in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tieconv-*"))
    assert snapshot(big_inputs["single"]) == before


def test_full_disk_is_a_clean_enospc(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        src = tmp_path / "in"
        shutil.copytree(FIXTURES / "llama-untied", src)
        big = torch.randn(200, 1024)  # 800 KB: more than the 64 KB disk
        save_file({"model.embed_tokens.weight": big, "lm_head.weight": big.clone()}, src / "model.safetensors")
        result = cli("tie", src, mnt / "out", "--quiet")
        assert result.returncode == 2 and "needs" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)])


# ---------------------------------------------------------------- 4. no code runs from a checkpoint


class WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


class ImportsModule:
    def __reduce__(self):
        return (__import__, ("antigravity",))


class CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["marker", "import", "system"])
def test_code_in_pickles_never_runs(tmp_path, payload):
    marker = tmp_path / "marker"
    evil = {"marker": WritesMarker(str(marker)), "import": ImportsModule(), "system": CallsSystem(str(marker))}[payload]
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((FIXTURES / "gpt2-bin" / "config.json").read_text())
    torch.save({"transformer.wte.weight": torch.zeros(64, 16), "x": evil}, folder / "pytorch_model.bin")
    for args in (["inspect", folder], ["tie", folder, tmp_path / "o1"], ["untie", folder, tmp_path / "o2"]):
        result = cli(*args)
        assert result.returncode == 2 and "refused" in result.stderr and "pytorch_model.bin" in result.stderr
    scan = tieconv.scan([tmp_path])
    assert [r.verdict for r in scan.rows] == ["unreadable"] and "refused" in scan.rows[0].error
    with pytest.raises(UnsafePickleError):
        tieconv.load_state_dict(folder)
    assert not marker.exists() and "antigravity" not in sys.modules
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ---------------------------------------------------------------- 5. no escape from the model folder


def test_output_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out").symlink_to(victim)
    result = cli("tie", FIXTURES / "llama-duplicated", tmp_path / "out")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert list(victim.iterdir()) == []
    result = cli("tie", FIXTURES / "llama-duplicated", tmp_path / "out", "--overwrite")
    assert result.returncode == 0 and not (tmp_path / "out").is_symlink() and list(victim.iterdir()) == []
    (tmp_path / "out2.tieconv-lock").symlink_to(victim / "lock")  # a link planted at the lock's name
    result = cli("tie", FIXTURES / "llama-duplicated", tmp_path / "out2")
    assert result.returncode == 2 and "lock" in result.stderr and list(victim.iterdir()) == []


# ---------------------------------------------------------------- 7. concurrent runs


def test_two_processes_into_one_output(tmp_path, big_inputs):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "tieconv.cli", "tie", str(big_inputs["single"]), str(out), "-q",
                              "--verify", "full"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(f"out.tieconv-tmp-{first.pid}-*")) and time.monotonic() < deadline \
            and first.poll() is None:
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # hold the first mid-write, so the two surely overlap
    try:
        started = time.monotonic()
        second = cli("tie", FIXTURES / "llama-duplicated", out, "-q")
        assert second.returncode == 2 and "another tieconv process" in second.stderr, second.stderr
        assert time.monotonic() - started < 30  # at once, not after waiting
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(120) == 0
    _verify_complete(big_inputs["single"], out)
    assert not list(tmp_path.glob("out.tieconv-*"))
