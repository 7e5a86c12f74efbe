"""The run directory, its result.json, and the flat results/runs.jsonl log."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError
from harness.record.atomic import json_line, write_json_atomic, write_jsonl_atomic, write_text_atomic, write_yaml_atomic
from harness.record.parts import EnergyPart, GatePart, QualityPart, ServePart
from harness.record.redact import redact_config
from harness.replay.stats import Counts, Latency, Percentiles, Throughput
from harness.replay.tokens import joules_per_output_token

if TYPE_CHECKING:
    from harness.config.schema import RunConfig

# The atomic writers are re-exported: callers write every run-directory file through here.
__all__ = [
    "RunPaths", "RunResult", "append_row", "flat_row", "load_result", "new_run_dir", "read_rows",
    "write_json_atomic", "write_jsonl_atomic", "write_result", "write_text_atomic", "write_yaml_atomic",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
# "offline": no serving kernel on this platform, so the checkpoint was built and scored with
# transformers instead (quality only, no energy); never ranked.
STATUSES = ("ok", "failed", "offline")


@dataclass(frozen=True)
class RunPaths:
    """Where each file of one run lives inside its run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def vllm_config(self) -> Path:
        return self.root / "vllm_config.yaml"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def requests(self) -> Path:
        return self.root / "requests.jsonl"

    @property
    def power_trace(self) -> Path:
        return self.root / "power_trace.csv"

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE


def new_run_dir(results_root: Path | str, variant: str, started: datetime) -> RunPaths:
    """Creates results_root/runs/<UTC start>-<variant>[-n], never reusing an existing one."""
    base = Path(results_root) / "runs" / f"{started.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{variant}"
    for attempt in range(1000):
        candidate = base if attempt == 0 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return RunPaths(candidate)
    raise ConfigError(f"1000 run directories named {base.name}* exist: clean {base.parent} "
                      "or set results_dir elsewhere")


def _append_locked(fd: int, data: bytes) -> None:
    # A crash mid-append can leave a torn last line without its newline; start on a fresh
    # line so the new row is not glued onto it (read_rows then skips only the torn one).
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)


def append_row(path: Path | str, row: Mapping[str, Any]) -> None:
    """Appends `row` as one JSON line to `path` (results/runs.jsonl), safe across processes.

    The line is serialised before the file is opened; it is appended with O_APPEND under an
    exclusive fcntl lock (parallel Hydra jobs never interleave) and fsynced.
    """
    line = json_line(row, path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-write so the last byte can be checked; O_APPEND still puts every write at the end.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _append_locked(fd, (line + "\n").encode("utf-8"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_rows(path: Path | str) -> list[dict[str, Any]]:
    """Reads results/runs.jsonl; a line that is not a whole JSON object is skipped and logged.

    Returns an empty list when the file does not exist yet.
    """
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                log.warning("%s line %d skipped: not a whole JSON row (%s); a write was cut off", path, number, error)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                log.warning("%s line %d skipped: a JSON %s, not an object", path, number, type(row).__name__)
    return rows


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced; written as result.json in its run directory.

    ``serve``, ``energy``, ``quality`` and ``gate`` are the typed parts of harness.record.parts;
    given as mappings (as read from result.json, or built by hand in a test) they are converted
    on construction. ``quality`` is None when nothing was scored, ``gate`` when there was no
    gate (the baseline itself, or no comparable baseline). ``lengths``: the output-token
    distribution of trial 1's answers per task (harness.replay.stats.output_lengths). ``thinking``:
    Gemma 4 thought blocks in those answers, flagged when thinking was off (harness.score.thinking).
    """

    run_id: str
    variant: str
    status: str
    started_at: str
    ended_at: str
    config: Mapping[str, Any]
    provenance: Mapping[str, Any]
    serve: ServePart
    energy: EnergyPart
    quality: QualityPart | None
    latency: Latency | None
    throughput: Throughput | None
    counts: Counts | None
    gate: GatePart | None = None
    error: str | None = None
    lengths: Mapping[str, Mapping[str, Any]] | None = None
    thinking: Mapping[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"RunResult.status must be one of {STATUSES}, got {self.status!r}")
        if self.status in ("failed", "offline") and not self.error:
            raise ValueError(f"a {self.status} RunResult needs `error` saying why it was not measured")
        for name, part in (("serve", ServePart), ("energy", EnergyPart), ("quality", QualityPart), ("gate", GatePart)):
            value = getattr(self, name)
            if value is None or isinstance(value, Mapping):
                object.__setattr__(self, name, part.from_dict(value))

    def to_dict(self) -> dict[str, Any]:
        """result.json's content: every part as a plain object (an unscored quality as {})."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("latency", "throughput", "counts", "serve", "energy", "gate"):
            value = data[name]
            data[name] = None if value is None else (value.to_dict() if hasattr(value, "to_dict") else asdict(value))
        data["quality"] = self.quality.to_dict() if self.quality is not None else {}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        """Rebuilds a RunResult from result.json; refuses other schema versions."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"result schema_version {version!r} is not {SCHEMA_VERSION}; "
                             "re-run the variant with this harness")
        values = dict(data)
        if values.get("latency") is not None:
            values["latency"] = Latency(**{key: Percentiles(**pcts) for key, pcts in values["latency"].items()})
        if values.get("throughput") is not None:
            values["throughput"] = Throughput(**values["throughput"])
        if values.get("counts") is not None:
            values["counts"] = Counts(**values["counts"])
        return cls(**values)


def write_result(run_dir: Path | str, result: RunResult) -> Path:
    """Writes result.json into `run_dir` atomically (NaN becomes null); returns its path."""
    return write_json_atomic(Path(run_dir) / RESULT_FILE, _finite(result.to_dict()))


# Config groups two runs must share to be compared (gated, resumed into, submitted as measured).
SAME_SETUP = ("model", "workload", "sampling")


def runs_newest_first(results_dir: Path | str, variant: str,
                      status: str | None = None) -> Iterator[tuple[dict, RunResult]]:
    """(runs.jsonl row, its RunResult) of each run of ``variant``, newest first: the one lookup
    behind baselines, resumes and submissions.

    Rows with another ``status`` (when given), a missing result.json, or one written by
    another schema version are skipped.
    """
    runs = Path(results_dir) / "runs"
    for row in reversed(read_rows(Path(results_dir) / "runs.jsonl")):
        if row.get("variant") != variant or (status is not None and row.get("status") != status):
            continue
        run_dir = runs / str(row.get("run_id"))
        if not (run_dir / RESULT_FILE).is_file():
            continue
        try:
            result = load_result(run_dir)
        except ValueError:  # another schema version: not comparable
            continue
        yield row, result


# Keys added to a setup section after runs were recorded, with the value those older runs had in effect.
SETUP_DEFAULTS = {"sampling": {"send": "explicit"}}


def setup_section(config: Mapping[str, Any], key: str) -> Any:
    """One SAME_SETUP section of a resolved config, keys added since a run was recorded filled in."""
    section = config.get(key)
    return {**SETUP_DEFAULTS[key], **section} if key in SETUP_DEFAULTS and isinstance(section, Mapping) else section


def same_setup(config: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two resolved configs share model, workload and sampling (SAME_SETUP)."""
    return all(setup_section(config, k) == setup_section(other, k) for k in SAME_SETUP)


def load_result(run_dir: Path | str) -> RunResult:
    """Reads `run_dir`/result.json back into a RunResult."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; the run did not finish recording (see its server.log)")
    return RunResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _finite(value: Any) -> Any:
    """Replaces NaN and infinities (not JSON) with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def flat_row(result: RunResult) -> dict[str, Any]:
    """The headline numbers of a run as one flat dict (units in the keys) for runs.jsonl."""
    energy, quality = result.energy, result.quality
    suite, idle, steady = (energy.window(name) for name in ("suite", "idle", "steady"))
    gate = result.gate
    overall = gate.overall if gate else {}
    compared = (gate.energy if gate else None) or {}
    latency, throughput, counts = result.latency, result.throughput, result.counts
    trial_j = energy.trial_suite_j()
    length = (result.lengths or {}).get("all") or {}
    row = {
        "schema_version": result.schema_version,
        "run_id": result.run_id,
        "variant": result.variant,
        "status": result.status,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "git_sha": result.provenance.get("git", {}).get("sha"),
        "git_dirty": result.provenance.get("git", {}).get("dirty"),
        "energy_source": energy.source,
        "energy_partial": energy.partial,
        "trials": len(energy.trials),
        # mean suite-window energy over the run's complete trials (trial 1's window for a run without trials)
        "suite_energy_j": energy.suite_j_mean if trial_j else suite.get("energy_j"),
        "suite_energy_j_sd": energy.suite_j_sd,
        "suite_duration_s": suite.get("duration_s"),
        "idle_energy_j": idle.get("energy_j"),
        "idle_duration_s": idle.get("duration_s"),
        "steady_energy_j": steady.get("energy_j"),
        "steady_duration_s": steady.get("duration_s"),
        "energy_flags": ", ".join(energy.flags()) or None,
        "quality_metric": quality.metric if quality else None,
        "quality_overall": quality.overall if quality else None,
        "quality_overall_micro": quality.overall_micro if quality else None,
        "gate_verdict": gate.verdict if gate else None,
        "gate_ratio": overall.get("point"),
        "gate_ratio_ci_low": overall.get("ci_low"),
        "gate_ratio_ci_high": overall.get("ci_high"),
        "energy_ratio": compared.get("ratio"),
        "energy_ratio_ci_low": compared.get("ci_low"),
        "energy_ratio_ci_high": compared.get("ci_high"),
        "energy_gap": compared.get("gap"),
        "ttft_ms_p50": latency.ttft_ms.p50 if latency else None,
        "ttft_ms_p90": latency.ttft_ms.p90 if latency else None,
        "ttft_ms_p99": latency.ttft_ms.p99 if latency else None,
        "latency_ms_p50": latency.latency_ms.p50 if latency else None,
        "latency_ms_p99": latency.latency_ms.p99 if latency else None,
        "itl_ms_p50": latency.itl_ms.p50 if latency else None,
        "output_tok_per_s": throughput.output_tok_per_s if throughput else None,
        "requests_per_s": throughput.requests_per_s if throughput else None,
        "requests": counts.requests if counts else None,
        "request_errors": counts.errors if counts else None,
        "output_tokens": counts.output_tokens if counts else None,
        # per successful request of trial 1 (server usage); decode share: attributed by time (harness.record.decode)
        "output_tokens_p50": length.get("median"),
        "output_tokens_p90": length.get("p90"),
        "output_tokens_max": length.get("max"),
        "decode_share": energy.decode_share(),
        # suite window energy / server-reported output tokens of successful requests (harness.replay.tokens)
        "suite_j_per_output_token": joules_per_output_token(suite.get("energy_j"),
                                                            counts.output_tokens if counts else None),
        "error": result.error,
    }
    return _finite(row)


def config_dict(run_cfg: RunConfig) -> dict:
    """The resolved configuration as plain data, as stored with every result (secrets redacted)."""
    return redact_config(jsonable(dataclasses.asdict(run_cfg)))


def jsonable(value):
    """Plain JSON data from dataclass dicts: tuples become lists, recursively."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
