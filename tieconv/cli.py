"""The `tieconv` command: a thin layer that parses options, calls the library, renders the result."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .errors import TieconvError
from .inspection.verdicts import PROBLEM_VERDICTS, TABLE, listed

if TYPE_CHECKING:
    from types import FrameType

    from .conversion.convert import ConversionResult

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_PROBLEM = 1
EXIT_INTERNAL = 70


def _handle_errors(func: Callable[..., None]) -> Callable[..., None]:
    """Turn library errors into exit code 2 and one line; other exceptions into 70 (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> None:
        try:
            return func(*args, **kwargs)
        except TieconvError as exc:
            if debug:
                raise
            click.echo(f"tieconv: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("tieconv: interrupted", err=True)
            sys.exit(128 + _signal_received[0])
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a bare traceback
            if debug:
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            click.echo(
                f"tieconv: internal error ({type(exc).__name__}: {first}); please report it with the output of --debug",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return click.option("--debug", is_flag=True, help="Show the traceback of internal errors.")(wrapper)


_signal_received = [2]  # SIGINT unless SIGTERM arrived: the exit code is 128 + the signal, as shells expect


def _install_signal_handlers() -> None:
    """SIGTERM cleans up like Ctrl-C (exit 143); SIGXFSZ is ignored so a file size limit surfaces as EFBIG."""
    import signal

    def terminate(signum: int, frame: FrameType | None) -> NoReturn:
        _signal_received[0] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


# what `--check` fails on, and each verdict's meaning, come from the verdict table (light: no torch)
_PROBLEMS = listed(PROBLEM_VERDICTS)
_VERDICT_LINES = "\n".join(f"      {v.value + (' *' if row.check_fails else ''):<17}{row.meaning}" for v, row in TABLE.items())


@click.group(context_settings=CONTEXT, help=f"""Are this checkpoint's input embedding and output head tied, and is that what the config says?

    \b
    Examples:
      tieconv inspect path/to/model-folder
      tieconv inspect consolidated.00.pth --json
      tieconv inspect path/to/model --check   # exit 1 when the flag and the data disagree

    Exit codes: 0 success; 1 --check found a problem (verdict {_PROBLEMS}); 2 bad input, a refusal
    or a failed verification; 70 an internal error; 130 / 143 interrupted by Ctrl-C / SIGTERM.
    """)
@click.version_option(__version__, "-V", "--version", prog_name="tieconv")
def main() -> None:
    _install_signal_handlers()


@main.command("inspect", context_settings=CONTEXT, short_help="Name a checkpoint's tying state, with the evidence.",
              help=f"""Name the tying state of the checkpoint at PATH with one verdict and its evidence.

    PATH is a Hugging Face model folder (safetensors or .bin, single or sharded), a single
    .safetensors / .bin / .pt / .pth file (Meta, TorchChat, nanoGPT, torchtune), a .gguf file,
    a sentence-transformers folder, or a Hub repo `org/name[@revision]` or `hf://org/name[@revision]`
    (a local path that exists, or one starting with ./ ../ / ~, is local; the local Hugging Face
    cache is read first; otherwise a repo's safetensors headers are read over HTTP, and only the
    two tensors' bytes are fetched when the verdict needs the comparison).

    \b
    Verdicts (* --check exits 1):
{_VERDICT_LINES}

    \b
    Examples:
      tieconv inspect fixtures/llama-duplicated
      tieconv inspect ckpt.pt --json
      tieconv inspect model.safetensors --embed tok_embeddings.weight --head output.weight
      tieconv inspect Qwen/Qwen2.5-0.5B@main --no-download
    """)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in the README).")
@click.option("--check", is_flag=True, help=f"Exit 1 on {_PROBLEMS} (the verdicts marked *).")
@click.option("--embed", metavar="KEY", help="Key of the input embedding as stored, e.g. tok_embeddings.weight.")
@click.option("--head", metavar="KEY", help="Key of the output head as stored, e.g. output.weight.")
@click.option(
    "--no-compare", is_flag=True, help="Do not compare the matrices' bytes; such verdicts become `undecided`."
)
@click.option("--no-download", is_flag=True, help="Hub repos: read headers only, never tensor bytes (= --no-compare).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def inspect_command(path: str, as_json: bool, check: bool, embed: str | None, head: str | None, no_compare: bool,
                    no_download: bool, quiet: bool) -> None:
    from .inspection.inspector import inspect
    from .progress import colour_enabled, set_quiet
    from .inspection.report import render

    set_quiet(quiet)
    report = inspect(path, embed=embed, head=head, compare=not (no_compare or no_download))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report, colour=colour_enabled()))
        if report.runtimes:
            from .knowledge.runtimes import render_rows

            click.echo("runtimes   what each one uses as the head (tieconv.knowledge.runtimes; `--json` has the sources)")
            click.echo("\n".join("  " + line for line in render_rows(report.runtimes)))
    if check and report.problem:
        sys.exit(EXIT_PROBLEM)


def _conversion_options(func: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.argument("src", metavar="IN"),
        click.argument("dst", metavar="OUT"),
        click.option("--dry-run", is_flag=True, help="Print the plan; write nothing."),
        click.option("--json", "as_json", is_flag=True, help="Print the result (with the plan) as JSON."),
        click.option("--force", is_flag=True, help="Write a normalised copy even when there is nothing to do."),
        click.option("--embed", metavar="KEY", help="Key of the input embedding as stored."),
        click.option("--head", metavar="KEY", help="Key of the output head as stored."),
        click.option("--overwrite", is_flag=True, help="Replace an existing OUT, only once the new one is complete."),
        click.option("--link", is_flag=True,
                     help="Hard-link unchanged shards instead of copying (a linked shard IS the input's file)."),
        click.option("--verify", type=click.Choice(["sample", "full", "none"]), default="sample", show_default=True,
                     help="Check the output: headers and sampled bytes, every byte, or nothing."),
        click.option("--drop-optimizer", is_flag=True,
                     help="Leave a training checkpoint's optimizer state out (it no longer matches)."),
        click.option("--drop-other-weights", is_flag=True,
                     help="Leave out weight files of another format than the one converted."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _render_conversion(result: ConversionResult, as_json: bool) -> None:
    from .conversion.convert import summary

    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(summary(result))


@main.command("tie", context_settings=CONTEXT, short_help="Write a copy whose head and embedding are stored once.")
@_conversion_options
@click.option("--keep", type=click.Choice(["embed", "head"]), help="Matrix that survives when the two differ.")
@click.option("--assume-tied", is_flag=True, help="Repair a head-missing checkpoint that was trained tied.")
@_handle_errors
def tie_command(src: str, dst: str, dry_run: bool, as_json: bool, force: bool, embed: str | None, head: str | None,
                overwrite: bool, link: bool, verify: str, drop_optimizer: bool, drop_other_weights: bool, quiet: bool,
                keep: str | None, assume_tied: bool) -> None:
    """Write OUT, a copy of IN whose head and embedding are stored once and whose config ties them.

    Drops the head and every other tie-map target stored as a bit-identical copy, sets the
    flag, and writes nothing else differently. Refuses when tying would change the model's
    outputs (the matrices differ: choose one with --keep) or when no head is stored and the
    config unties (--assume-tied). Nothing to do: says so, writes nothing, exits 0.

    OUT mirrors IN: a folder for a folder; for a single file, OUT's suffix picks the format
    (.safetensors; .pt, .pth, .bin or .ckpt for a torch file; .gguf for a GGUF input).

    \b
    Examples (each writes a new OUT, so they can be pasted in order):
      tieconv tie fixtures/llama-duplicated /tmp/llama-tied
      tieconv tie fixtures/llama-conflict /tmp/llama-keep-embed --keep embed
      tieconv tie fixtures/llama-head-missing /tmp/llama-repaired --assume-tied --dry-run
      tieconv tie fixtures/single-files/llama-untied.safetensors /tmp/llama.pt --keep embed
    """
    from .conversion.convert import tie
    from .progress import set_quiet

    set_quiet(quiet)
    result = tie(src, dst, keep=keep, assume_tied=assume_tied, force=force, dry_run=dry_run, embed=embed, head=head,
                 overwrite=overwrite, link=link, verify=verify, drop_optimizer=drop_optimizer,
                 drop_other_weights=drop_other_weights)
    _render_conversion(result, as_json)


@main.command("untie", context_settings=CONTEXT, short_help="Write a copy whose head is its own tensor.")
@_conversion_options
@_handle_errors
def untie_command(src: str, dst: str, dry_run: bool, as_json: bool, force: bool, embed: str | None,
                  head: str | None, overwrite: bool, link: bool, verify: str, drop_optimizer: bool,
                  drop_other_weights: bool, quiet: bool) -> None:
    """Write OUT, a copy of IN whose head is its own tensor and whose config unties it.

    Stores a copy of the embedding under every tie-map target a loader reads (BART's
    encoder and decoder embeddings too) and sets the flag to untied. A `conflict`
    keeps both matrices as stored. Nothing to do: says so, writes nothing, exits 0.

    OUT mirrors IN, as for `tie`.

    \b
    Examples (each writes a new OUT, so they can be pasted in order):
      tieconv untie fixtures/llama-tied /tmp/llama-untied
      tieconv untie fixtures/bart-tied /tmp/bart-untied --json
      tieconv untie fixtures/nanogpt/ckpt.pt /tmp/nanogpt-untied.pt
    """
    from .conversion.convert import untie
    from .progress import set_quiet

    set_quiet(quiet)
    result = untie(src, dst, force=force, dry_run=dry_run, embed=embed, head=head, overwrite=overwrite, link=link,
                   verify=verify, drop_optimizer=drop_optimizer, drop_other_weights=drop_other_weights)
    _render_conversion(result, as_json)


@main.command("diff", context_settings=CONTEXT, short_help="Compare two checkpoints as a loader sees them.")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON (schema in the README).")
@click.option("--check", is_flag=True, help="Exit 1 when a loader would build different models from A and B.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def diff_command(a: str, b: str, as_json: bool, check: bool, quiet: bool) -> None:
    """Does a loader build the same model from checkpoint A and checkpoint B?

    Compares what a loader builds, not files: for every parameter, the stored bytes it gets
    on each side after the tie map and its flag, base-model prefixes and aliases, compared
    byte for byte (a different dtype is a difference; shards, file names and tied-vs-copied
    storage are not). Reports parameters whose values differ (max abs / relative difference),
    parameters one side would start at random, tensors only one side stores, and config
    fields that differ. A and B must be read by the same loaders: both transformers
    folders or Hub repos, both files without a config, or both GGUF.

    \b
    Examples:
      tieconv diff fixtures/llama-tied fixtures/llama-tied-sharded
      tieconv diff original/ merged/ --check        # after mergekit, a conversion script...
      tieconv diff org/name@main ./local-copy --json
    """
    from .inspection.equivalence import diff, render
    from .progress import set_quiet

    set_quiet(quiet)
    report = diff(a, b)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render(report))
    if check and not report.equivalent:
        sys.exit(EXIT_PROBLEM)


@main.command("scan", context_settings=CONTEXT, short_help="Inspect every checkpoint in folders, repos or the HF cache.")
@click.argument("dirs", nargs=-1, metavar="[DIR|REPO]...")
@click.option("--json", "as_json", is_flag=True, help="Print rows and totals as JSON.")
@click.option("--check", is_flag=True, help="Exit 1 when a model has a problem verdict (unreadable ones do not count).")
@click.option("--no-compare", is_flag=True, help="Read headers only; verdicts that need a comparison are undecided.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_handle_errors
def scan_command(dirs: tuple[str, ...], as_json: bool, check: bool, no_compare: bool, quiet: bool) -> None:
    """Inspect every checkpoint below DIR (default: the local Hugging Face cache), and Hub repos.

    Finds each cached repo revision, each model folder and each single checkpoint file; a Hub repo
    id (org/name[@revision]) is read header-only, at most 8 repos at a time. Prints
    one row per model (name, verdict, size, reclaimable bytes) sorted by reclaimable bytes, with
    totals. What it cannot read gets a warning row; the scan goes on.

    \b
    Examples:
      tieconv scan                      # the Hugging Face cache
      tieconv scan fixtures --json
      tieconv scan ~/models --check     # exit 1 if any model has a problem
      tieconv scan Qwen/Qwen2.5-0.5B HuggingFaceTB/SmolLM2-135M
    """
    from .progress import colour_enabled, set_quiet
    from .inspection.scanning import render, scan

    set_quiet(quiet)
    result = scan(list(dirs) or None, compare=not no_compare)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else render(result, colour=colour_enabled()))
    if result.missing:  # the other roots were scanned; a path that does not exist is still bad input
        click.echo(f"tieconv: error: {', '.join(result.missing)}: no such file or folder", err=True)
        sys.exit(2)
    if check and result.problems:
        sys.exit(EXIT_PROBLEM)


if __name__ == "__main__":  # pragma: no cover
    main()
