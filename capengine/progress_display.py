"""`capengine run`'s progress display: a bar redrawn in place on a terminal, plain lines otherwise (a log file,
a CI console), both on stderr so that the call listing on stdout stays machine-readable.

Fed by the job run's `on_change` (each job.progress / job.metrics call): the bar redraws at most ten times a
second and a plain line is printed only when the progress crosses the next tenth, so a guest that reports
progress on every item cannot flood the terminal. The message is the guest's: escaped (safe_text), so it cannot
move the cursor, recolour the terminal or forge a line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from capengine.host.job_run import JobRun
from capengine.host.safe_text import escape

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._last_draw = 0.0
        self._last_tenth = -1
        self._drawn = False

    def update(self, run: JobRun) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= REDRAW_SECONDS or run.progress >= 1.0:
                self._last_draw = now
                self._draw(run)
            return
        tenth = int(run.progress * 10)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            print(f"progress {run.progress:4.0%} {escape(run.message)}  items {run.items}", file=self.stream,
                  flush=True)

    def _draw(self, run: JobRun) -> None:
        filled = round(run.progress * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"\r[{bar}] {run.progress:4.0%} {escape(run.message)[:40]:40} items {run.items}"
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def finish(self, run: JobRun) -> None:
        """The final state (always drawn once the job reported anything) and the line break after the bar."""
        if self.tty and self._drawn:
            self._draw(run)
            self.stream.write("\n")
            self.stream.flush()
