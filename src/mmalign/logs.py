"""Logging for rule scripts: to the rule's log file and to the terminal.

A rule's log must hold the reason it failed, not only what it said on the way.
:func:`setup_logging` therefore sends to ``log_file``, as well as to the
terminal:

- every log record (level ``level`` and up, any logger);
- the traceback of an uncaught exception, in the main thread or another one
  (``sys.excepthook`` / ``threading.excepthook`` log it at CRITICAL);
- ``warnings.warn`` messages (``logging.captureWarnings``);
- whatever else is written to ``sys.stderr`` (libraries' own messages, progress
  bars): the terminal gets it unchanged, so tqdm still redraws its bar in place,
  and the file gets each finished line once, so a bar appears in its final
  state rather than as every redraw;
- a fatal signal's Python stack (``faulthandler``), file only.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import sys
import threading
import types
from pathlib import Path
from typing import IO, Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"

log = logging.getLogger(__name__)


class StderrTee:
    """``sys.stderr`` that also copies finished lines to a log file.

    Everything goes to ``console`` as written. The file side keeps the current
    line in a buffer: a carriage return starts the line over (a progress bar's
    redraw), a newline writes it out. A line left unfinished is written by
    :meth:`flush_line` (at exit)."""

    def __init__(self, console: IO[str], handler: logging.StreamHandler) -> None:
        self.console = console
        self.handler = handler
        self._line = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self.console.write(text)
        with self._lock:
            done = []
            for piece in text.splitlines(keepends=True):
                if piece.endswith(("\n", "\r\n")):
                    done.append(self._current(self._line + piece.rstrip("\r\n")) + "\n")
                    self._line = ""
                else:
                    self._line = self._compact(self._line + piece)
            if done:
                self._to_file("".join(done))
        return len(text) if written is None else written

    @staticmethod
    def _current(line: str) -> str:
        """What a terminal shows of ``line``: the text after its last carriage return."""
        return line.rstrip("\r").rsplit("\r", 1)[-1]

    @classmethod
    def _compact(cls, line: str) -> str:
        """``line`` less what a carriage return has already replaced (a bar's redraws)."""
        return cls._current(line) + ("\r" if line.endswith("\r") else "")

    def _to_file(self, text: str) -> None:
        stream = getattr(self.handler, "stream", None)
        if stream is None or stream.closed:
            return
        with contextlib.suppress(Exception), self.handler.lock or contextlib.nullcontext():
            stream.write(text)
            stream.flush()

    def flush_line(self) -> None:
        """Write an unfinished last line (a bar that was never closed) to the file."""
        with self._lock:
            line, self._line = self._current(self._line), ""
        if line.strip():
            self._to_file(line + "\n")

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer, ...
        return getattr(self.console, name)


def _log_exception(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: types.TracebackType | None,
    where: str = "",
) -> None:
    logging.getLogger("mmalign").critical(
        "Uncaught exception%s: %s: %s", where, exc_type.__name__, exc, exc_info=(exc_type, exc, tb)
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    _log_exception(exc_type, exc, tb)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _log_exception(args.exc_type, args.exc_value, args.exc_traceback, f" in thread {name}")


_fault_file: IO[str] | None = None


def _enable_faulthandler(log_file: str | Path) -> None:
    """Dump the Python stack to the log on a crash (segfault, abort) that no
    exception hook sees. A file of its own, in append mode: faulthandler needs it
    open until the very end, after logging has closed its handlers."""
    global _fault_file
    if _fault_file is not None:
        faulthandler.disable()
        _fault_file.close()
    _fault_file = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 (kept open on purpose)
    faulthandler.enable(file=_fault_file)


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send log records, uncaught exceptions, warnings and stderr to ``log_file``
    (the rule's ``log:``, overwritten) and to the terminal; see the module's
    docstring. Calling it again replaces the previous set-up. Returns the
    ``mmalign`` logger, for a script's own messages."""
    console = sys.stderr.console if isinstance(sys.stderr, StderrTee) else sys.stderr
    if isinstance(sys.stderr, StderrTee):
        sys.stderr.flush_line()
    sys.stderr = console
    handlers: list[logging.Handler] = [logging.StreamHandler(console)]
    file_handler = None
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        handlers.append(file_handler)
    fmt = logging.Formatter(FORMAT, DATEFMT)
    for handler in handlers:
        handler.setFormatter(fmt)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    threading.excepthook = _threading_excepthook
    if file_handler is not None:
        tee = StderrTee(console, file_handler)
        sys.stderr = tee
        atexit.register(tee.flush_line)  # runs before logging's own shutdown
        _enable_faulthandler(log_file)
    return logging.getLogger("mmalign")
