"""What every submission is made from, whichever engine serves it: the newest ok run, the empty
output folder, the recipe with this machine's paths cut, and the model card's measured inputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.schemes import LayerSpec
from harness.config.schema import RunConfig
from harness.errors import SubmitError
from harness.leaderboard.data import run_row
from harness.record.result import load_result, runs_newest_first, same_setup
from harness.submit.card import model_card
from harness.submit.check import folder_size_bytes
from harness.submit.target import HostLaunch, Target

# Overrides of where files live on this machine: they do not belong in a model card.
LOCAL_KEYS = ("results_dir", "cache_dir", "hydra.", "serve.port", "serve.host", "serve.api_key")


@dataclass(frozen=True)
class Submission:
    """A written folder, and what its check and its card need.

    Attributes:
        engine: the judges' server that serves it: "vllm" or "llama_cpp".
        target: the judges' GPU and vLLM (vLLM only; llama.cpp has no target GPU).
        host: whether and how this host can serve the folder (vLLM only; flags never written into it).
        expect: the weights the variant names (vLLM: the check refuses a folder holding others).
        built: the card's "Built for" lines: target, and how the folder differs from what the run served.
        card: model_card's other arguments, kept to rewrite the card with the check's outcome.
        quant_tag: the GGUF type the variant names, e.g. Q4_K_M (llama.cpp: the check refuses a model file of another).
    """

    folder: Path
    engine: str = "vllm"
    target: Target | None = None
    host: HostLaunch | None = None
    expect: LayerSpec | None = None
    built: tuple[str, ...] = ()
    card: Mapping[str, Any] = field(default_factory=dict)
    quant_tag: str | None = None


def newest_ok_run(run_cfg: RunConfig, config: dict[str, Any]):
    """The newest successful run of `run_cfg.name` with the same model, suite and sampling, and its directory."""
    results = Path(run_cfg.results_dir)
    seen = []
    for row, result in runs_newest_first(results, run_cfg.name, status="ok"):
        if same_setup(result.config, config):
            return result, results / "runs" / row["run_id"]
        seen.append(row["run_id"])
    hint = (f"runs {', '.join(seen)} differ in model, workload or sampling: pass the overrides they ran with "
            "(e.g. workload.limit=8)") if seen else f"run `python -m harness +variant={run_cfg.name}` first"
    raise SubmitError(f"no successful run of {run_cfg.name} in {results}; {hint}")


def check_out(out: Path) -> None:
    """Refuses an output folder that already holds something (a submission is written whole, once)."""
    if out.exists() and any(out.iterdir()):
        raise SubmitError(f"{out} exists and is not empty: remove it or pass --out to a new folder")


def copy_recipe(recipe: Path, out: Path) -> None:
    """recipe.json into `out`, its absolute paths of this machine cut to file or folder names."""
    if recipe.is_file():
        data = _relative(json.loads(recipe.read_text(encoding="utf-8")))
        (out / "recipe.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _relative(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def reproducible(overrides: list[str]) -> list[str]:
    """The overrides that define the run, without this machine's paths, ports and keys."""
    return [o for o in overrides if not o.lstrip("+").startswith(LOCAL_KEYS) and "variant=" not in o]


def card_inputs(run_cfg: RunConfig, result, run_dir: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """model_card's measured arguments: the run's and its baseline's leaderboard rows, the overrides
    that reproduce it, and the folder's size before the card."""
    baseline_id = result.gate.baseline_run_id if result.gate else None
    base_dir = Path(run_cfg.results_dir) / "runs" / str(baseline_id)
    baseline_row = run_row(load_result(base_dir), base_dir) if baseline_id and base_dir.is_dir() else None
    return {"result": result, "variant_row": run_row(result, run_dir), "baseline_row": baseline_row,
            "overrides": reproducible(overrides), "size_bytes": folder_size_bytes(out)}


def write_card(submission: Submission, validation: tuple[str, ...] | None) -> None:
    """(Re)writes README.md; `validation` is what the folder's check ran (None: not yet)."""
    text = model_card(folder=submission.folder, built=submission.built, validation=validation, **submission.card)
    (submission.folder / "README.md").write_text(text, encoding="utf-8")
