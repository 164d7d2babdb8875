"""`scan`: find every checkpoint below some folders (default: the Hugging Face cache) and inspect each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, TieconvError
from .report import PROBLEM_VERDICTS, human_bytes

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ..formats.checkpoint import Checkpoint
    from ..formats.hub import DownloadCounter, RepoRef
    from .report import Report

MODEL_FOLDER_MARKERS = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "adapter_config.json", "params.json", "modules.json",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".gguf", ".pt", ".pth", ".bin", ".ckpt")
# Hub repos are read with this many requests in flight: enough to hide latency, few enough for any server
HUB_CONCURRENCY = 8


@dataclass
class ScanRow:
    name: str
    path: str
    verdict: str  # a verdict, or "unreadable"
    layout: str | None
    bytes_total: int
    reclaimable_bytes: int
    error: str | None = None


@dataclass
class ScanResult:
    roots: list[str]
    rows: list[ScanRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # roots the user named that do not exist (exit 2 at the end)
    empty_cache: str | None = None  # the default Hugging Face cache, when it is absent or holds no model

    @property
    def problems(self) -> list[ScanRow]:
        return [r for r in self.rows if r.verdict in PROBLEM_VERDICTS]

    def to_dict(self) -> dict[str, Any]:
        readable = [r for r in self.rows if r.error is None]
        return {
            "roots": self.roots,
            "rows": [asdict(r) for r in self.rows],
            "totals": {
                "models": len(readable),
                "unreadable": len(self.rows) - len(readable),
                "bytes_total": sum(r.bytes_total for r in readable),
                "reclaimable_bytes": sum(r.reclaimable_bytes for r in readable),
                "problems": len(self.problems),
            },
        }


def default_roots() -> list[Path]:
    from huggingface_hub import constants  # cheap: honours HF_HOME / HF_HUB_CACHE

    return [Path(constants.HF_HUB_CACHE)]


def find_checkpoints(root: Path) -> list[tuple[str, Path]]:
    """(display name, path) of each cached repo revision, model folder and loose checkpoint file below root.

    Cache repos are found by their folder name (`models--org--name`, huggingface_hub's `repo_folder_name`)
    rather than with `huggingface_hub.scan_cache_dir`, which does more than we may: it walks every file of
    every snapshot and stats its blob, following a snapshot folder linked out of the cache (README guarantee
    5: scan never follows one; `_refuse_snapshot_link` refuses it before anything inside is read), and it
    drops a repo with one broken link into its warnings, where scan must list it as unreadable. Only the
    snapshot folders' names are read here; the inspect of each does the rest, inside its folder.
    """
    found: list[tuple[str, Path]] = []
    if root.is_file():
        return [(root.name, root)]
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        if here.name.startswith("models--") and (here / "snapshots").is_dir():
            repo = here.name[len("models--"):].replace("--", "/")
            for rev in sorted((here / "snapshots").iterdir()):
                if rev.is_dir():  # a snapshot linked out of the cache is listed, then refused by scan()
                    found.append((f"{repo}@{rev.name[:8]}", rev))
            dirnames.clear()
            continue
        if here != root and here.name.startswith("."):
            dirnames.clear()
            continue
        if any(m in filenames for m in MODEL_FOLDER_MARKERS):
            found.append((str(here.relative_to(root)) if here != root else here.name, here))
            dirnames.clear()
            continue
        for name in sorted(filenames):
            if name.endswith(CHECKPOINT_SUFFIXES):
                path = here / name
                found.append((str(path.relative_to(root)), path))
    return found


def _refuse_snapshot_link(path: Path) -> None:
    """A cache snapshot folder that is a link leaving its repo is never followed."""
    if path.is_symlink() and path.parent.name == "snapshots":
        repo = path.parent.parent.resolve()
        if not path.resolve().is_relative_to(repo):
            raise InputError(f"{path}: is a link to {path.resolve()}, outside the cache; not followed")


def _inspect_local(path: Path, compare: bool) -> Report:
    from .inspector import inspect

    _refuse_snapshot_link(path)
    return inspect(path, compare=compare)


def scan(roots: Iterable[str | os.PathLike[str]] | None = None, *, compare: bool = True) -> ScanResult:
    """Inspect every checkpoint below `roots` (default: the Hugging Face cache); never stops on a bad one.

    Example:
        >>> import tieconv
        >>> result = tieconv.scan(["fixtures"])
        >>> len(result.rows) > 10
        True
    """
    from ..formats import hub
    from .inspector import inspect
    from ..progress import bar

    default = not roots
    roots = list(roots) if roots else default_roots()
    result = ScanResult([str(r) for r in roots])
    refs: list[RepoRef] = []
    paths: list[Path] = []
    for root in roots:
        try:
            ref = hub.repo_ref(root)
        except TieconvError as exc:  # hf://... that is no valid repo id
            result.rows.append(ScanRow(str(root), str(root), "unreadable", None, 0, 0, str(exc)))
            continue
        if ref is None:
            paths.append(Path(root))
        else:
            refs.append(ref)
    targets = []
    for root in paths:
        if not root.exists():
            if default:  # no cache yet: nothing to scan, which is not an error
                continue
            result.missing.append(str(root))
            result.rows.append(ScanRow(str(root), str(root), "unreadable", None, 0, 0, f"{root}: no such file or folder"))
            continue
        targets += find_checkpoints(root)
    if default and not targets:
        result.empty_cache = str(roots[0])
    with bar(len(targets) + len(refs), "scanning", unit="model") as progress:
        for name, path in targets:
            result.rows.append(_row(name, path, lambda path=path: _inspect_local(path, compare)))
            progress.update(1)
        for row in _scan_repos(refs):
            result.rows.append(row)
            progress.update(1)
    result.rows.sort(key=lambda r: (r.error is not None, -r.reclaimable_bytes, r.name))
    return result


def _row(name: str, path: str | Path, inspect_it: Callable[..., Report]) -> ScanRow:
    """One row: the report's verdict and sizes, or why the model cannot be read."""
    try:
        report = inspect_it()
        return ScanRow(name, str(path), report.verdict, report.layout, report.bytes.total, report.reclaimable_bytes)
    except TieconvError as exc:
        return ScanRow(name, str(path), "unreadable", None, 0, 0, str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken model must not stop a scan
        return ScanRow(name, str(path), "unreadable", None, 0, 0,
                       f"{path}: internal error ({type(exc).__name__}: {exc})"[:300])


def _scan_repos(refs: list[RepoRef]) -> Iterator[ScanRow]:
    """Rows for Hub repos, header-only, with at most HUB_CONCURRENCY repos read at once; yielded as they finish."""
    if not refs:
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from ..formats import hub

    with ThreadPoolExecutor(max_workers=min(HUB_CONCURRENCY, len(refs))) as pool:
        futures = {pool.submit(hub.open_repo, ref): ref for ref in refs}
        for future in as_completed(futures):
            ref = futures[future]

            def inspect_it(future: Future[tuple[Checkpoint, DownloadCounter]] = future, ref: RepoRef = ref) -> Report:
                ckpt, counter = future.result()
                # header-only: a verdict that needs the two matrices' bytes, unless an earlier inspect
                # remembered their comparison, is `undecided` (inspect that repo alone)
                return hub.inspect_opened(ref, ckpt, counter, header_only=True)

            yield _row(ref.text, ref.text, inspect_it)


def render(result: ScanResult, colour: bool = False) -> str:
    from .report import paint

    if result.empty_cache is not None and not result.rows:
        return f"no models in the Hugging Face cache ({result.empty_cache}); nothing to scan"
    rows = result.rows
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'model':<{width}}  {'verdict':<13}  {'size':>9}  {'reclaimable':>11}"]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<{width}}  {'unreadable':<13}  {'-':>9}  {'-':>11}  warning: {r.error}")
        else:
            verdict = paint(r.verdict, colour) + " " * max(0, 13 - len(r.verdict))  # pad outside the colour codes
            lines.append(f"{r.name:<{width}}  {verdict}  {human_bytes(r.bytes_total):>9}  "
                         f"{human_bytes(r.reclaimable_bytes):>11}")
    totals = result.to_dict()["totals"]
    models = totals["models"]
    lines.append(f"{models} model{'s' if models != 1 else ''}, {human_bytes(totals['bytes_total'])}, reclaimable "
                 f"{human_bytes(totals['reclaimable_bytes'])}; {totals['problems']} with a problem, "
                 f"{totals['unreadable']} unreadable")
    return "\n".join(lines)
