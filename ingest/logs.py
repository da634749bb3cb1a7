"""Structured logging: one JSON object per line, carrying the upload and task ids.

The frontend binds ``upload_id`` (and ``task_id`` once a verification is
queued) for the duration of a request; the worker binds both for the duration
of a task. Every log line emitted meanwhile carries them, so one upload can be
followed from the frontend to the worker with a single filter, e.g.
``jq 'select(.upload_id == "…")'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["JsonFormatter", "bind", "configure", "task_id_var", "upload_id_var"]

upload_id_var: ContextVar[str | None] = ContextVar("upload_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def bind(*, upload_id: str | None = None, task_id: str | None = None) -> Iterator[None]:
    """Attach ids to every log line emitted inside the block (this task or request)."""
    tokens = []
    if upload_id is not None:
        tokens.append((upload_id_var, upload_id_var.set(upload_id)))
    if task_id is not None:
        tokens.append((task_id_var, task_id_var.set(task_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "upload_id", None) is None:
            record.upload_id = upload_id_var.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = task_id_var.get()
        # Celery's own lines about a task (received, succeeded, failed) are logged
        # outside the task's context; they carry the task id in their data. (The
        # worker logs a line binding the task to its upload when it receives it.)
        data = getattr(record, "data", None)
        if (
            isinstance(data, dict)
            and getattr(record, "task_id", None) is None
            and isinstance(data.get("id"), str)
        ):
            record.task_id = data["id"]
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "upload_id", "task_id", ...extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str = "INFO", fmt: str = "json", logfile: str | None = None) -> None:
    """Install the handler on the root logger (idempotent); stderr unless ``logfile``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ingest", False):
            root.removeHandler(h)
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler._ingest = True  # type: ignore[attr-defined]
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(upload_id)s %(task_id)s] %(message)s"
        )
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
