"""Benchmark `tieconv inspect` and `tieconv scan` on Hub repos served on loopback.

The server is the test suite's: olah serving local git repos, behind nginx honouring HTTP ranges
(tests/hub_server.py). The repos are Llama-3.2-1B-shaped bf16 checkpoints (vocab 128256, hidden 2048,
16 layers, 1.24B parameters, ~1 GB shards) with sparse shards stored as git LFS objects, in a tied
variant (the verdict is decided by the headers) and a duplicated one (the two matrices are compared).

Measured, each a whole process with a fresh HF cache and a fresh tieconv header cache (the
architecture cache warm), median of --repeat runs alternated with the reference:

  1. bytes fetched (`downloaded_bytes`) for both variants;
  2. time of `tieconv inspect` (tied) vs `huggingface_hub.get_safetensors_metadata` on the same repo;
  3. time of `tieconv scan` over 20 smaller Llama-shaped repos (3 shards each), header-only.

Usage:  python bench/bench_hub.py [--dir bench/out/hub] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hub_server import LLAMA_3_2_1B, local_hub, make_git_repo, write_llama_repo

SCAN_SHAPE = {"vocab": 16384, "hidden": 256, "layers": 4, "intermediate": 1024, "heads": 4, "kv_heads": 2,
              "shard_bytes": 6_000_000}
REFERENCE = ("import sys; from huggingface_hub import get_safetensors_metadata as g; "
             "m = g(sys.argv[1]); print(len(m.weight_map))")


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "out" / "hub")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the repos and the server's store an interrupted run left in --dir")
    args = parser.parse_args()
    work = args.dir
    names = [f"bench/llama-1b-{v}" for v in ("tied", "duplicated")] + [f"bench/scan-{i:02d}" for i in range(20)]
    mirrors = work / "server" / "mirrors" / "models"
    if not (args.reuse and all((mirrors / n / ".git").is_dir() for n in names)):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        build(work)
    measure(work, {n: mirrors / n if (mirrors / n).is_dir() else work / "git" / n.split("/")[1] for n in names},
            args.repeat)


def build(work: Path) -> None:
    """The repos: two Llama-3.2-1B-shaped ones (sparse shards as LFS objects) and 20 small ones for the scan."""
    for variant in ("tied", "duplicated"):
        sparse = work / "sparse" / variant
        files = write_llama_repo(sparse, variant=variant, **LLAMA_3_2_1B)
        git = work / "git" / f"llama-1b-{variant}"
        shutil.copytree(sparse, git, ignore=shutil.ignore_patterns("*.safetensors"))
        make_git_repo(git, lfs=files)
    for i in range(20):
        folder = work / "git" / f"scan-{i:02d}"
        write_llama_repo(folder, variant="tied" if i % 2 else "duplicated", **SCAN_SHAPE)
        make_git_repo(folder)


def measure(work: Path, repos: dict[str, Path], repeat: int) -> None:
    xdg_arch = Path(tempfile.mkdtemp(dir=work))
    base_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1"}
    base_env.pop("HF_HUB_OFFLINE", None)
    print("starting the server and filling its store (reads every file once)...", flush=True)
    with local_hub(work / "server", repos) as endpoint:
        def env() -> dict:
            fresh = Path(tempfile.mkdtemp(dir=work))
            (fresh / "xdg" / "tieconv").mkdir(parents=True)
            for f in (xdg_arch / "tieconv").glob("architectures-*.json"):
                shutil.copy(f, fresh / "xdg" / "tieconv" / f.name)
            return {**base_env, "HF_ENDPOINT": endpoint, "HF_HOME": str(fresh / "hf"),
                    "XDG_CACHE_HOME": str(fresh / "xdg")}

        tieconv = [sys.executable, "-m", "tieconv.cli"]
        # warm the architecture cache and the server's HEAD cache once
        subprocess.run(tieconv + ["inspect", "bench/llama-1b-tied"], check=True, capture_output=True, cwd=ROOT,
                       env={**base_env, "HF_ENDPOINT": endpoint, "HF_HOME": str(work / "warm-hf"),
                            "XDG_CACHE_HOME": str(xdg_arch)})
        run([sys.executable, "-c", REFERENCE, "bench/llama-1b-tied"], env())

        figures = {}
        for variant in ("tied", "duplicated"):
            _, out = run(tieconv + ["inspect", f"bench/llama-1b-{variant}", "--json"], env())
            doc = json.loads(out)
            config = (work / "sparse" / variant / "config.json").stat().st_size
            figures[variant] = {"verdict": doc["verdict"], "downloaded_bytes": doc["downloaded_bytes"],
                                "beyond_config": doc["downloaded_bytes"] - config,
                                "two_tensors": doc["embed"]["nbytes"] + (doc["head"]["nbytes"] if doc["head"] else 0)}
        ours, theirs = [], []
        for _ in range(repeat):
            ours.append(run(tieconv + ["inspect", "bench/llama-1b-tied", "--json"], env())[0])
            theirs.append(run([sys.executable, "-c", REFERENCE, "bench/llama-1b-tied"], env())[0])
        scan_times = []
        scan_args = tieconv + ["scan", "-q", "--json"] + [f"bench/scan-{i:02d}" for i in range(20)]
        for _ in range(max(3, repeat // 2)):
            seconds, out = run(scan_args, env())
            scan_times.append(seconds)
        rows = json.loads(out)["rows"]
    result = {
        "bytes": figures,
        "inspect_tied_seconds": statistics.median(ours),
        "get_safetensors_metadata_seconds": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs),
        "scan_20_repos_seconds": statistics.median(scan_times),
        "scan_verdicts": sorted({r["verdict"] for r in rows}),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
