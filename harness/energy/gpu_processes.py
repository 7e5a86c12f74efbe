"""Other processes on a metered GPU: their energy would land, unseen, in the workload's windows."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from harness.energy.base import FLAG_OTHER_PROCESS
from harness.energy.nvml_errors import NvmlError, optional

log = logging.getLogger(__name__)
# A process with a CUDA context appears in the first list, one drawing on the GPU in the second.
_QUERIES = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")
CANNOT_TELL = ("NVML lists processes on this GPU but none of the workload's (NVML reports host PIDs, "
               "so inside a container none match): other processes cannot be told apart here")


def other_processes(pids: Iterable[int], pgid: int) -> list[int] | None:
    """The PIDs among ``pids`` (NVML's, for one GPU) outside process group ``pgid``, sorted.

    None when there are PIDs and none of them is in the group: NVML then reports PIDs of another
    PID namespace (the host's, seen from a container), and flagging them would flag the workload.
    """
    pids = set(pids)
    ours = {pid for pid in pids if _process_group(pid) == pgid}
    if pids and not ours:
        return None
    return sorted(pids - ours)


class ProcessWatch:
    """Which processes outside the workload's process group use each metered GPU.

    The workload is one process group: the vLLM server runs in a group of its own (the harness
    stops it by that group), with its engine and worker processes. Any process on a metered GPU
    in another group is someone else's; at each sample it raises FLAG_OTHER_PROCESS, so the
    windows it overlaps carry the flag, and ``warnings`` says which PIDs were seen.

    Args:
        nvml: the pynvml module or a stand-in.
        pid: a process of the workload (the server's pid); this process when None.
    """

    def __init__(self, nvml: ModuleType | Any, pid: int | None = None) -> None:
        self._nvml = nvml
        self._pgid = _process_group(os.getpid() if pid is None else pid)
        self.others: dict[str, set[int]] = {}  # device label -> PIDs of other processes seen
        self.notes: dict[str, str] = {}  # device label -> why other processes could not be checked
        self._off: set[str] = set()

    def events(self, device: str, handle: Any) -> list[str]:
        """[FLAG_OTHER_PROCESS] when a process outside the workload uses the GPU now, else []."""
        if self._pgid is None or device in self._off:
            return []
        try:
            pids = [p.pid for name in _QUERIES for p in optional(self._nvml, name, handle) or ()]
        except NvmlError as err:  # never let this check stop the energy measurement
            self._off.add(device)
            self.notes[device] = f"the process list could not be read ({err})"
            return []
        others = other_processes(pids, self._pgid)
        if others is None:
            self.notes.setdefault(device, CANNOT_TELL)
            return []
        if not others:
            return []
        new = set(others) - self.others.setdefault(device, set())
        if new:
            log.warning("%s: other processes use the metered GPU (pid %s): their energy is in the windows",
                        device, ", ".join(map(str, sorted(new))))
        self.others[device].update(others)
        return [FLAG_OTHER_PROCESS]

    def warnings(self) -> list[str]:
        """What the watch saw, one sentence per GPU, for the result (empty when the GPUs were the workload's)."""
        seen = [f"{device}: other processes used the metered GPU (pid {', '.join(map(str, sorted(pids)))}); "
                f"windows overlapping them are flagged {FLAG_OTHER_PROCESS}:{device}"
                for device, pids in sorted(self.others.items())]
        return seen + [f"{device}: {note}" for device, note in sorted(self.notes.items())]


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # no such process here (exited, or another PID namespace's)
        return None
