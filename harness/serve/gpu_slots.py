"""One GPU per job process in a multirun: a Hydra callback that leases a GPU and sets CUDA_VISIBLE_DEVICES.

Hydra's joblib launcher runs jobs in a fixed set of worker processes and hands each free
worker the next job, so job number modulo GPU count could put two running jobs on one GPU.
Instead each worker process leases one GPU for its whole life (an exclusive fcntl lock on a
file per GPU, released by the OS when the process exits) and every job it runs uses that GPU.
With n_jobs equal to the GPU count every worker finds a free GPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

LEASE_DIR = Path(tempfile.gettempdir()) / f"harness-gpu-leases-{os.getuid()}"
_POLL_S = 1.0
_HELD: dict[str, Any] = {}  # "gpu" -> this process's GPU id, "file" -> the open, locked lease file


def visible_gpus(gpus: Any = "auto") -> list[str]:
    """The GPU ids jobs may use: ``gpus`` when it is a list, else CUDA_VISIBLE_DEVICES, else NVML's count."""
    if gpus not in (None, "auto"):
        return [str(g) for g in (gpus if isinstance(gpus, Sequence) and not isinstance(gpus, str) else [gpus])]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(_nvml_count())]


def gpu_count(gpus: Any = "auto") -> int:
    """Jobs to run side by side: one per GPU, at least one (CPU-only machines run one at a time)."""
    return max(1, len(visible_gpus(gpus)))


def _nvml_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def lease_gpu(gpus: Sequence[str], lease_dir: Path = LEASE_DIR, wait_s: float = 3600.0) -> str:
    """This process's GPU: the one it already holds, else the first free one of ``gpus``.

    Raises:
        TimeoutError: every GPU stayed leased by other processes for ``wait_s`` seconds
            (more jobs side by side than GPUs: lower hydra.launcher.n_jobs).
    """
    if _HELD.get("gpu") in gpus:
        return _HELD["gpu"]
    lease_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for gpu in gpus:
            handle = (lease_dir / f"gpu-{gpu}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _release()
            _HELD.update(gpu=gpu, file=handle)
            return gpu
        if time.monotonic() > deadline:
            raise TimeoutError(f"all GPUs {list(gpus)} stayed leased for {wait_s:g} s: lower hydra.launcher.n_jobs "
                               "to the number of GPUs")
        time.sleep(_POLL_S)


def _release() -> None:
    handle = _HELD.pop("file", None)
    _HELD.pop("gpu", None)
    if handle is not None:
        handle.close()  # closing the file drops the lock


class PinGpu(Callback):
    """At each job start: lease a GPU for this process and expose only it to the job.

    Args:
        gpus: "auto" (CUDA_VISIBLE_DEVICES if set, else every GPU NVML sees), a list of ids,
            or null to leave CUDA_VISIBLE_DEVICES alone. With no GPU it does nothing.
    """

    def __init__(self, gpus: Any = "auto") -> None:
        self.gpus = OmegaConf.to_container(gpus) if OmegaConf.is_config(gpus) else gpus

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if self.gpus is None or HydraConfig.get().mode != RunMode.MULTIRUN:
            return  # a single run keeps the caller's CUDA_VISIBLE_DEVICES
        gpus = visible_gpus(self.gpus)
        if not gpus:
            return
        gpu = lease_gpu(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("job %s (pid %d) runs on GPU %s of %s", config.hydra.job.get("num", 0), os.getpid(), gpu, gpus)


def register_resolvers() -> None:
    """``${harness_gpu_count:GPUS}`` for hydra.launcher.n_jobs (idempotent)."""
    if not OmegaConf.has_resolver("harness_gpu_count"):
        OmegaConf.register_new_resolver("harness_gpu_count", lambda gpus="auto": gpu_count(gpus))
