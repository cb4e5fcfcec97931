"""The evaluations' progress report: one line on stderr, rewritten in place
(into a log file, not a terminal: only the finished line)."""

from __future__ import annotations

import sys
import time
from typing import Callable


def meter(what: str, total: int, *, unit: str = "images",
          enabled: bool = True) -> Callable[..., None]:
  """``update(done, note="")``: rewrites ``what: done/total unit, rate unit/s``
  (and ``note``) in place; ends the line at ``done >= total``. A no-op when
  not ``enabled``."""
  t0, live = time.time(), sys.stderr.isatty()

  def update(done: int, note: str = "") -> None:
    if not enabled or (done < total and not live):
      return
    rate = done / max(time.time() - t0, 1e-9)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{what}: {done}/{total} {unit}, {rate:.0f} {unit}/s"
                     + (f", {note}" if note else "") + end)
    sys.stderr.flush()

  return update
