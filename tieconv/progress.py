"""Progress bars on stderr (tqdm), only when stderr is a terminal and not --quiet; never on stdout."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or allow) tieconv's bars and huggingface_hub's download bars."""
    global _quiet
    _quiet = quiet
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars  # type: ignore[attr-defined]

        (disable_progress_bars if not enabled() else enable_progress_bars)()
    elif not enabled():
        # read by huggingface_hub when it is imported; importing it here would slow every start-up
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


def colour_enabled() -> bool:
    # no-color.org: NO_COLOR disables colour when it is present *and not empty*
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


if TYPE_CHECKING:
    Bar: TypeAlias = "_Silent | tqdm[Any]"  # what bar() yields


@contextmanager
def bar(total: int, desc: str, unit: str = "B") -> Iterator[Bar]:
    """A tqdm bar with bytes and rate, or a silent stand-in."""
    if not enabled() or total <= 0:
        yield _Silent()
        return
    from tqdm import tqdm

    # decimal units (1 KB = 1000 B), as every summary prints them
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1000,
              file=sys.stderr, leave=False) as t:
        yield t
