"""Hub repo ids against a real Hub-compatible server (olah) on loopback, serving local git repos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import FIXTURES, ROOT

REPOS = {"org/tiny-dup": "llama-duplicated", "org/tiny-tied": "llama-tied", "org/tiny-sharded": "llama-untied-sharded",
         "org/gpt2-bin": "gpt2-bin", "org/bert": "bert-encoder"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    pytest.importorskip("olah", reason="olah is a test extra: pip install -e '.[test]'")
    base = tmp_path_factory.mktemp("olah")
    for repo, fixture in REPOS.items():
        dst = base / "mirrors" / "models" / repo
        shutil.copytree(FIXTURES / fixture, dst)
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
        for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
            subprocess.run(cmd, cwd=dst, check=True, env=env)
    port = _free_port()
    (base / "config.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\nmirrors-path = ["{base / "mirrors"}"]\n'
        f'repos-path = "{base / "repos"}"\n\n[accessibility]\noffline = true\n')
    log = open(base / "olah.log", "w")
    # olah's console script `olah-cli` is `olah.server:cli`; run it with this interpreter (no PATH lookup)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())",
                             "-c", str(base / "config.toml")], cwd=base, stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/api/models/org/tiny-dup/revision/main", timeout=2)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"olah did not start: {(base / 'olah.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def tieconv(args, *, endpoint, home, offline=False, check=False):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-m", "tieconv.cli", *map(str, args)], env=env, capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_inspect_a_repo_reads_headers_and_compares(hub, tmp_path):
    out = tieconv(["inspect", "org/tiny-dup", "--json"], endpoint=hub, home=tmp_path / "hf", check=True)
    doc = json.loads(out.stdout)
    assert doc["layout"] == "hub" and doc["verdict"] == "duplicated" and doc["identical"] is True
    assert doc["downloaded_bytes"] > 0
    size = (FIXTURES / "llama-duplicated" / "model.safetensors").stat().st_size
    # no weight file was put in the cache to decide
    cached = list((tmp_path / "hf" / "hub").rglob("*.safetensors"))
    assert cached == [] and doc["bytes"]["total"] < size


def test_no_download_is_undecided(hub, tmp_path):
    out = tieconv(["inspect", "org/tiny-dup", "--no-download", "--json"], endpoint=hub, home=tmp_path / "hf",
                  check=True)
    doc = json.loads(out.stdout)
    assert doc["verdict"] == "undecided" and doc["identical"] is None


@pytest.mark.parametrize("repo,verdict", [("org/tiny-tied", "tied"), ("org/tiny-sharded", "untied"),
                                          ("org/bert", "no-head"), ("org/gpt2-bin", "tied"),
                                          ("org/tiny-dup@main", "duplicated")])
def test_repo_verdicts(hub, tmp_path, repo, verdict):
    doc = json.loads(tieconv(["inspect", repo, "--json"], endpoint=hub, home=tmp_path / "hf", check=True).stdout)
    assert doc["verdict"] == verdict and doc["layout"] == "hub"


def test_tie_a_repo_then_use_the_cache_offline(hub, tmp_path):
    home = tmp_path / "hf"
    result = tieconv(["tie", "org/tiny-dup", tmp_path / "out", "--json"], endpoint=hub, home=home, check=True)
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "tied" and doc["bytes_saved"] == 2048
    offline = tieconv(["inspect", "org/tiny-dup", "--json"], endpoint="http://127.0.0.1:9", home=home, offline=True,
                      check=True)
    doc = json.loads(offline.stdout)
    assert doc["verdict"] == "duplicated" and any("cache" in n for n in doc["notes"])
    missing = tieconv(["inspect", "org/tiny-tied"], endpoint="http://127.0.0.1:9", home=home, offline=True)
    assert missing.returncode == 2 and "cache" in missing.stderr and "Traceback" not in missing.stderr


def test_unknown_repo_is_a_clean_error(hub, tmp_path):
    for args in (["inspect", "org/nope"], ["tie", "org/nope", tmp_path / "out"]):
        result = tieconv(args, endpoint=hub, home=tmp_path / "hf")
        assert result.returncode == 2 and "org/nope" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_local_path_wins(hub, tmp_path, monkeypatch):
    (tmp_path / "org").mkdir()
    shutil.copytree(FIXTURES / "llama-tied", tmp_path / "org" / "tiny-dup")
    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "tieconv.cli", "inspect", "org/tiny-dup", "--json"], env=env,
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    doc = json.loads(out.stdout)
    assert doc["verdict"] == "tied" and doc["layout"] == "hf-safetensors"
    assert any("local path was used" in n for n in doc["notes"])
