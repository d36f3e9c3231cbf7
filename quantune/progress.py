"""Progress bars (tqdm, with ETA) that can be silenced globally for CI logs."""

from __future__ import annotations

import os
import sys
from typing import Any

_QUIET = os.environ.get("QUANTUNE_QUIET", "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar."""
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enable: bool = True) -> Any:
    """A tqdm bar on stderr, or a no-op bar when disabled or quiet."""
    if not enable or _QUIET:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


class suppressed:
    """Context manager silencing new progress bars (e.g. per-trial bars under a search bar)."""

    def __enter__(self) -> None:
        global _QUIET
        self._previous = _QUIET
        _QUIET = True

    def __exit__(self, *exc: Any) -> None:
        global _QUIET
        _QUIET = self._previous
