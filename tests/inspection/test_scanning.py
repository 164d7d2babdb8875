from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from click.testing import CliRunner

import tieconv
from tieconv.cli import main

from ..conftest import FIXTURES


def make_cache_repo(hub: Path, repo: str, source: Path, rev: str = "a" * 40) -> Path:
    """Lay out `source`'s files as huggingface_hub's cache does: blobs by hash, snapshot symlinks."""
    base = hub / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    for f in source.iterdir():
        data = f.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return snap


def test_scan_mixed_folders_with_unreadable_entries(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(FIXTURES / "llama-duplicated", root / "dup")
    shutil.copytree(FIXTURES / "llama-tied", root / "tied")
    shutil.copy(FIXTURES / "single-files" / "llama-untied.safetensors", root / "loose.safetensors")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    (root / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    result = tieconv.scan([root])
    names = [r.name for r in result.rows]
    assert names[0] == "dup" and result.rows[0].reclaimable_bytes == 2048  # sorted by reclaimable
    verdicts = {r.name: r.verdict for r in result.rows}
    assert verdicts == {"dup": "duplicated", "tied": "tied", "loose.safetensors": "untied", "broken": "unreadable",
                        "garbage.safetensors": "unreadable", "adapter": "unreadable"}
    totals = result.to_dict()["totals"]
    assert totals["models"] == 3 and totals["unreadable"] == 3 and totals["reclaimable_bytes"] == 2048
    runner = CliRunner()
    out = runner.invoke(main, ["scan", str(root)])
    assert out.exit_code == 0 and "warning:" in out.output and "3 unreadable" in out.output
    assert runner.invoke(main, ["scan", str(root), "--check"]).exit_code == 1
    shutil.rmtree(root / "dup")
    assert runner.invoke(main, ["scan", str(root), "--check"]).exit_code == 0
    doc = json.loads(runner.invoke(main, ["scan", str(root), "--json"]).output)
    assert doc["totals"]["models"] == 2


def test_scan_the_hugging_face_cache_by_default(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    make_cache_repo(hub, "org/tiny-dup", FIXTURES / "llama-duplicated")
    make_cache_repo(hub, "org/tiny-tied", FIXTURES / "llama-tied")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        result = tieconv.scan()
    finally:
        monkeypatch.delenv("HF_HUB_CACHE")
        importlib.reload(huggingface_hub.constants)
    assert [(r.name, r.verdict) for r in result.rows] == [("org/tiny-dup@aaaaaaaa", "duplicated"),
                                                          ("org/tiny-tied@aaaaaaaa", "tied")]


def test_cache_snapshot_links_leaving_the_repo_are_refused(tmp_path):
    hub = tmp_path / "hub"
    snap = make_cache_repo(hub, "org/m", FIXTURES / "llama-tied")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(FIXTURES / "llama-tied" / "model.safetensors", outside)
    (snap / "model.safetensors").unlink()
    os.symlink(outside, snap / "model.safetensors")
    result = tieconv.scan([hub])
    assert result.rows[0].verdict == "unreadable" and "outside the model folder" in result.rows[0].error


def test_a_snapshot_folder_linked_out_of_the_cache_is_never_followed(tmp_path):
    """huggingface_hub's scan_cache_dir would walk and stat the linked folder; scan refuses it unread."""
    hub = tmp_path / "hub"
    snap = make_cache_repo(hub, "org/m", FIXTURES / "llama-tied")
    outside = tmp_path / "outside"
    shutil.copytree(FIXTURES / "llama-tied", outside)
    shutil.rmtree(snap)
    os.symlink(outside, snap)
    result = tieconv.scan([hub])
    assert [(r.name, r.verdict) for r in result.rows] == [("org/m@aaaaaaaa", "unreadable")]
    assert "outside the cache; not followed" in result.rows[0].error


def test_a_cache_repo_with_a_broken_link_is_listed_as_unreadable(tmp_path):
    """scan_cache_dir drops such a repo into its warnings; scan lists it with the reason."""
    hub = tmp_path / "hub"
    snap = make_cache_repo(hub, "org/broken", FIXTURES / "llama-tied")
    make_cache_repo(hub, "org/fine", FIXTURES / "llama-tied")
    target = (snap / "model.safetensors").resolve()
    target.unlink()
    result = tieconv.scan([hub])
    verdicts = {r.name: r.verdict for r in result.rows}
    assert verdicts == {"org/broken@aaaaaaaa": "unreadable", "org/fine@aaaaaaaa": "tied"}


def test_scan_reads_hub_repos_with_bounded_concurrency(tmp_path, monkeypatch):
    import threading
    import time

    from tieconv.formats import hub
    from tieconv.inspection import scanning
    from tieconv.formats.checkpoint import open_checkpoint

    active, peak, lock = [0], [0], threading.Lock()

    def open_repo(ref):  # stands in for the network: each repo takes 0.2 s
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        if ref.repo == "org/missing":
            raise tieconv.errors.InputError("no Hub repo org/missing@main")
        return open_checkpoint(FIXTURES / "llama-tied"), hub.DownloadCounter()

    monkeypatch.setattr(hub, "open_repo", open_repo)
    repos = [f"org/m{i}" for i in range(20)] + ["org/missing"]
    start = time.monotonic()
    result = tieconv.scan(repos + [str(FIXTURES / "llama-tied")])
    seconds = time.monotonic() - start
    assert peak[0] == scanning.HUB_CONCURRENCY and seconds < 21 * 0.2  # concurrent, but never more than the bound
    verdicts = {r.name: r.verdict for r in result.rows}
    assert all(verdicts[f"org/m{i}"] == "tied" for i in range(20)) and verdicts["org/missing"] == "unreadable"
    assert verdicts["llama-tied"] == "tied"


def test_a_missing_root_is_an_error_after_the_others_are_scanned(tmp_path):
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "nope"), str(FIXTURES / "llama-tied")])
    assert result.exit_code == 2
    assert "llama-tied" in result.output and "1 model," in result.output
    assert "nope: no such file or folder" in result.output


def test_an_absent_or_empty_cache_says_so_in_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for make in (False, True):
        if make:
            (tmp_path / "hub").mkdir()
        result = CliRunner().invoke(main, ["scan"])
        assert result.exit_code == 0
        assert result.output.strip() == f"no models in the Hugging Face cache ({tmp_path / 'hub'}); nothing to scan"


def test_scan_colours_verdicts_like_inspect():
    from tieconv.inspection.scanning import render

    text = render(tieconv.scan([FIXTURES / "llama-conflict"]), colour=True)
    assert "\x1b[31mconflict\x1b[0m" in text
