"""Where progress lines go by default.

`echo` looks `print` up when called. A default of `print` itself is bound at import time and pickled
by reference (Tune pickles the sweep's callbacks): in a process where Ray Train has since replaced
`builtins.print` by its redirect (its workers do), that reference no longer pickles."""

from __future__ import annotations

import logging
import os

VERBOSE_VAR = "LEPTON_RAY_VERBOSE"
"""Set to 1 to keep the libraries' INFO logs and notices on the console."""


def echo(message: str) -> None:
    print(message, flush=True)


def quiet_info_logs(logger_name: str) -> None:
    """A library's INFO lines off the console (its warnings and errors stay), unless LEPTON_RAY_VERBOSE=1."""
    if os.environ.get(VERBOSE_VAR) != "1":
        logger = logging.getLogger(logger_name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


class DropNotice(logging.Filter):
    """Drops one expected notice (matched by its start) from a library's logger."""

    def __init__(self, starts_with: str) -> None:
        super().__init__()
        self.starts_with = starts_with

    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get(VERBOSE_VAR) == "1" or not record.getMessage().startswith(self.starts_with)
