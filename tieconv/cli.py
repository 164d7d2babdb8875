"""The `tieconv` command: a thin layer that parses options, calls the library, renders the result."""

from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .errors import TieconvError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_PROBLEM = 1
EXIT_INTERNAL = 70


def _handle_errors(func):
    """Turn library errors into exit code 2 and one line; other exceptions into 70 (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args, debug: bool = False, **kwargs):
        try:
            return func(*args, **kwargs)
        except TieconvError as exc:
            if debug:
                raise
            click.echo(f"tieconv: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("tieconv: interrupted", err=True)
            sys.exit(130)
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


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="tieconv")
def main() -> None:
    """Are this checkpoint's input embedding and output head tied, and is that what the config says?

    \b
    Examples:
      tieconv inspect path/to/model-folder
      tieconv inspect consolidated.00.pth --json
      tieconv inspect path/to/model --check   # exit 1 when the flag and the data disagree

    Exit codes: 0 success; 1 --check found a problem; 2 bad input, a refusal or a failed
    verification; 70 an internal error.
    """


@main.command("inspect", context_settings=CONTEXT)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in the README).")
@click.option("--check", is_flag=True, help="Exit 1 on duplicated, conflict, head-missing, embed-missing or undecided.")
@click.option("--embed", metavar="KEY", help="Key of the input embedding as stored, e.g. tok_embeddings.weight.")
@click.option("--head", metavar="KEY", help="Key of the output head as stored, e.g. output.weight.")
@click.option(
    "--no-compare", is_flag=True, help="Do not compare the matrices' bytes; such verdicts become `undecided`."
)
@_handle_errors
def inspect_command(path: str, as_json: bool, check: bool, embed: str | None, head: str | None, no_compare: bool) -> None:
    """Name the tying state of the checkpoint at PATH with one verdict, and the evidence.

    PATH is a Hugging Face model folder (safetensors or .bin, single or sharded), a single
    .safetensors / .bin / .pt / .pth file (Meta, TorchChat, nanoGPT, torchtune), or a
    sentence-transformers folder.

    \b
    Verdicts: tied, duplicated, untied, tieable, conflict, head-missing, embed-missing,
    no-head, undecided.

    \b
    Examples:
      tieconv inspect fixtures/llama-duplicated
      tieconv inspect ckpt.pt --json
      tieconv inspect model.safetensors --embed tok_embeddings.weight --head output.weight
    """
    from .inspection import inspect
    from .report import render

    report = inspect(path, embed=embed, head=head, compare=not no_compare)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report))
    if check and report.problem:
        sys.exit(EXIT_PROBLEM)


if __name__ == "__main__":  # pragma: no cover
    main()
