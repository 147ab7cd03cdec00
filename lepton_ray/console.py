"""Where progress lines go by default.

`echo` looks `print` up when called. A default of `print` itself is bound at import time and pickled
by reference (Tune pickles the sweep's callbacks): in a process where Ray Train has since replaced
`builtins.print` by its redirect (its workers do), that reference no longer pickles."""

from __future__ import annotations


def echo(message: str) -> None:
    print(message, flush=True)
