"""Keeps secrets out of the logs: `api_key=...` in a logged URL is replaced before it is written."""

from __future__ import annotations

import logging
import re

_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)
SCRUBBED_LOGGERS = ("uvicorn.access", "uvicorn.error")


def scrub(text: str) -> str:
    return _KEY_IN_URL.sub(r"\1[redacted]", text)


class KeyScrubber(logging.Filter):
    """Redacts API keys from a record's message and arguments (uvicorn logs the request line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        return True


def install() -> None:
    """Add the scrubber to uvicorn's loggers once (idempotent)."""
    for name in SCRUBBED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, KeyScrubber) for f in logger.filters):
            logger.addFilter(KeyScrubber())
