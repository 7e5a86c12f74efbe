"""The one clock every energy window edge, meter sample and request time is read from.

Monotonic, so a wall-clock step (NTP, a suspended VM) can neither shorten nor reverse a
window; on the wall clock's scale (seconds since the epoch as of this process's start), so
traces, result.json and requests.jsonl stay readable as times of day. Only times taken in the
same process are compared with each other.
"""

from __future__ import annotations

import time

_WALL0_S, _MONO0_S = time.time(), time.monotonic()


def now() -> float:
    """The wall time at this process's start plus the monotonic seconds since, in seconds."""
    return _WALL0_S + (time.monotonic() - _MONO0_S)
