"""The progress line of long work (a launch coming up, an upload, a push). On a terminal it is one line rewritten in
place; in a log or a pipe it is one line per change, so a CI log shows each step once instead of a line per tick.
It goes to stderr: stdout stays clean for `-o json`."""

from __future__ import annotations

import time
from typing import TextIO


def elapsed(seconds: float) -> str:
    """mm:ss (h:mm:ss past an hour)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressLine:
    """`update(text)` shows where the work is; `done()` ends the line. `quiet` shows nothing."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.started = time.monotonic()
        self._last = ""
        self._width = 0

    def update(self, text: str) -> None:
        if self.quiet:
            return
        stamp = elapsed(time.monotonic() - self.started)
        if self.tty:
            line = f"{text}  {stamp}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        elif text != self._last:
            self.stream.write(f"{text}  {stamp}\n")
            self.stream.flush()
        self._last = text

    def note(self, text: str) -> None:
        """A message on a line of its own (a reconnect, a fallback), without losing the progress line."""
        if self.quiet:
            return
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty and self._last:
            self.update(self._last)

    def done(self) -> None:
        if self.tty and self._width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
