"""A run's logging: console INFO lines and a structured JSON-lines log (``out/log.jsonl``), with library logs and
worker-thread exceptions sent to the file only, all undone when the run ends."""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path


class JsonLines(logging.Handler):
    """One JSON object per log record (t, level, logger, msg, exc) appended to `path`; a failed write (a full
    disk) stops the file log with one warning and leaves the console log running."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.f = open(path, "a")

    def emit(self, rec):
        if self.f is None:
            return
        try:
            entry = {
                "t": round(rec.created, 3),
                "level": rec.levelname,
                "logger": rec.name,
                "msg": rec.getMessage(),
            }
            if rec.exc_info:
                entry["exc"] = logging.Formatter().formatException(rec.exc_info)
            self.f.write(json.dumps(entry) + "\n")
            self.f.flush()
        except OSError as e:  # e.g. a full disk: keep the console log, stop the file log, say so once
            self.f = None
            print(f"warning: log file {self.path} is no longer written ({e.strerror or e})", file=sys.stderr)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        super().close()


_LIBRARY_LOGGERS = ("absl", "asyncio", "orbax", "concurrent.futures")


def setup_logging(out: Path, main: bool):
    """Console INFO lines plus a structured JSON-lines log in out/log.jsonl, for the duration of one run.

    Returns a function that puts every logger and ``threading.excepthook`` back as they were (``run`` calls it
    when it ends, so an in-process caller keeps its own logging)."""
    names = ("optima_jax", "optima_jax.threads", "", *_LIBRARY_LOGGERS)
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level) for n in names
    }
    saved_hook = threading.excepthook
    opened: list[logging.Handler] = []

    def restore():
        for n, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
        threading.excepthook = saved_hook
        for h in opened:
            h.close()

    root = logging.getLogger("optima_jax")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    if not main:  # other processes of a multi-host run stay silent
        root.addHandler(logging.NullHandler())
        root.propagate = False
        return restore

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    file_log = JsonLines(out / "log.jsonl")
    opened.append(file_log)
    root.addHandler(console)
    root.addHandler(file_log)
    root.propagate = False
    # Libraries' own logs (Orbax via absl, asyncio) and exceptions in their worker threads go to the file log
    # only: a failed write surfaces once, as our one-line error, with the details in log.jsonl.
    for name in _LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    logging.getLogger().handlers[:] = [file_log]  # the root: every library logger that propagates
    threads = logging.getLogger("optima_jax.threads")
    threads.handlers.clear()
    threads.addHandler(file_log)
    threads.propagate = False
    threading.excepthook = lambda a: threads.error(
        "exception in thread %s", getattr(a.thread, "name", "?"), exc_info=(a.exc_type, a.exc_value, a.exc_traceback)
    )
    return restore
