"""The daemon's own log: text for a terminal, or JSON lines (`--log-format json`) for a log pipeline.

Both carry RFC 3339 UTC times. Messages that quote guest-controlled text are escaped by json in JSON mode;
in text mode control characters are escaped so a guest cannot forge log lines or drive the terminal.
"""

from __future__ import annotations

import json
import logging

from capengine.daemon.decision_log import rfc3339


def _escape(text: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{rfc3339(record.created)} {record.levelname} {record.name}: {_escape(record.getMessage())}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": rfc3339(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
