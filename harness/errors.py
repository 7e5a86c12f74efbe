"""The project's error base class and the user-facing errors every step raises (a leaf module).

A command catches ``HarnessError`` with isinstance and prints its message as one line (exit 2):
every error here says what is wrong and how to fix it. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises for bad input, a missing capability or a failed run."""


class ConfigError(HarnessError, ValueError):
    """A configuration does not fit its schema; the message names the key and what is accepted."""


class BuildError(HarnessError, RuntimeError):
    """The base model cannot be found or the variant cannot be built; says how to fix it."""


class PlatformError(HarnessError, RuntimeError):
    """The variant needs something this machine's vLLM cannot do."""


class ServerError(HarnessError, RuntimeError):
    """The vLLM server failed to start or died; the message carries the tail of its log."""


class RunFailed(HarnessError, RuntimeError):
    """The run completed but must not be ranked (e.g. too many requests failed)."""


class SubmitError(HarnessError, RuntimeError):
    """No run to submit, no record of the target's vLLM, or the output folder cannot be written; says how to fix it."""
