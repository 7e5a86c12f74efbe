"""The typed parts of a RunResult: how the model was served, what was measured, how it scored, how it was gated.

Each part is written to result.json as an object whose keys are its fields, and read back
with ``from_dict``, which ignores keys it does not know (a later harness's additions) and
fills the ones an earlier harness did not write with their defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _known(cls: type, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields of ``cls`` found in ``data``; JSON lists become the tuples the fields declare."""
    sequences = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    return {key: tuple(value) if key in sequences and isinstance(value, list) else value
            for key, value in (data or {}).items() if key in {f.name for f in fields(cls)}}


class _Part:
    """from_dict / to_dict shared by the parts."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        return cls(**_known(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ServePart(_Part):
    """The server as launched.

    ``effective``: the serve settings after the platform check (secrets redacted); ``engine``:
    which server ran it (vllm or llama_cpp) and, for llama.cpp, the settings read back from it;
    ``platform``: what the machine offered, in words; ``fallbacks``: each setting the
    platform replaced, with the reason; ``cache_config``: vLLM's own cache_config_info labels
    (what prefix caching and the KV cache really used); ``model_dir``: the checkpoint served;
    ``unservable``: for an offline run, why no server could run it here; ``changes_from_base``:
    how the generation config and chat template served differ from the base model's, each with
    what it changes (harness.serve.generation.changes_from_base).
    """

    effective: Mapping[str, Any] = field(default_factory=dict)
    engine: Mapping[str, Any] = field(default_factory=dict)
    platform: Any = None
    fallbacks: tuple[Mapping[str, Any], ...] = ()
    cache_config: Mapping[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    unservable: str | None = None
    changes_from_base: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnergyPart(_Part):
    """What the meter measured (harness.pipeline.energy_record builds it; README "Trials" defines each figure).

    ``windows``: Window.to_dict() of the idle window, trial 1's suite and steady windows and
    lm-eval's; ``trials``: one record per trial (its suite and steady windows, idle power,
    active energy, cache counts, steady tokens, and ``decode``: the suite's time and energy split
    into decode and the rest, attributed by time, harness.record.decode); ``suite_j_mean``/``suite_j_sd``: over the
    complete trials; ``partial``: a resumed or cut-short run (never compared or ranked); ``gpu``: the
    metered GPUs (gpu_snapshot at "start" and "end") and "warnings": other processes seen on them, or
    why they could not be checked (harness.energy.gpu_processes; their windows are flagged).
    """

    source: str | None = None
    meter: str | None = None
    measurement_version: int | None = None
    partial: bool = False
    windows: tuple[Mapping[str, Any], ...] = ()
    trials: tuple[Mapping[str, Any], ...] = ()
    suite_j_mean: float | None = None
    suite_j_sd: float | None = None
    per_request_j: Mapping[str, float] = field(default_factory=dict)
    gpu: Mapping[str, Any] | None = None
    cache_config: Mapping[str, str] = field(default_factory=dict)

    def window(self, name: str) -> Mapping[str, Any]:
        """The named window of trial 1 (or idle, lm_eval) as recorded; {} when there is none."""
        return next((w for w in self.windows if w.get("name") == name), {})

    def trial_suite_j(self) -> list[float]:
        """Suite-window energy of each complete trial, in trial order."""
        return [t["suite"]["energy_j"] for t in self.trials if t.get("suite") and t["suite"].get("name") == "suite"]

    def decode_share(self) -> float | None:
        """Mean over complete trials of the suite time share attributed to decoding (harness.record.decode)."""
        shares = [t["decode"]["decode_share"] for t in self.trials
                  if t.get("decode") and t.get("suite") and t["suite"].get("name") == "suite"]
        return sum(shares) / len(shares) if shares else None

    def flags(self) -> list[str]:
        """Integrity flags of any suite window (every trial's and trial 1's), each once."""
        suites = [t["suite"] for t in self.trials if t.get("suite")] + [self.window("suite")]
        return sorted({flag for w in suites for flag in w.get("flags", ())})


@dataclass(frozen=True)
class QualityPart(_Part):
    """How the answers scored: harness.score.quality.QualityReport.to_dict(), plus the engine's extras.

    ``engine``: "lm_eval" or "offline-transformers-greedy" when not the suite replay;
    ``lm_eval``: lm-eval's run summary; ``suite``: the suite replay's own scores when lm-eval decided.
    """

    metric: str
    overall: float
    overall_micro: float
    per_task: Mapping[str, float] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    items: tuple[Mapping[str, Any], ...] = ()
    engine: str | None = None
    lm_eval: Mapping[str, Any] | None = None
    suite: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> QualityPart | None:
        """None for an empty quality (a run that scored nothing)."""
        return cls(**_known(cls, data)) if data else None


@dataclass(frozen=True)
class GatePart(_Part):
    """The gate against the baseline: harness.score.gate.Gate.to_dict() plus the baseline's run id.

    ``verdict`` is None, with ``error`` saying why, when gating itself failed (the result is
    written all the same); ``energy`` is harness.score.energy.EnergyComparison.to_dict() or
    None (``notes`` then say why it was not compared).
    """

    verdict: str | None
    rule: str | None = None
    threshold: float | None = None
    metric: str | None = None
    point_pass: bool | None = None
    overall: Mapping[str, Any] = field(default_factory=dict)
    per_task: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int | None = None
    energy: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()
    baseline_run_id: str | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GatePart | None:
        """None when there was no gate (the baseline itself, or no comparable baseline)."""
        return cls(**_known(cls, data)) if data else None

    def energy_ratio(self) -> Mapping[str, Any]:
        """The energy comparison's ratio and interval as {"point", "ci_low", "ci_high"} ({} when none)."""
        e = self.energy or {}
        return {"point": e.get("ratio"), "ci_low": e.get("ci_low"), "ci_high": e.get("ci_high")} if e else {}
