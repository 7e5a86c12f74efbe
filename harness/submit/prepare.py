"""`python -m harness.submit +variant=NAME [overrides] [--out DIR]`: a validated upload folder from the
newest ok run."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from harness.config.schema import ConfigError, RunConfig
from harness.errors import HarnessError
from harness.record.result import runs_newest_first, same_setup

# Checkpoint files that make up a servable model; anything else (training logs, caches) stays behind.
CHECKPOINT_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                    "recipe.json")
# Overrides of where files live on this machine: they do not belong in a model card.
LOCAL_KEYS = ("results_dir", "cache_dir", "hydra.", "serve.port", "serve.host", "serve.api_key")


class SubmitError(HarnessError, RuntimeError):
    """No run to submit, or the output folder cannot be written; says how to fix it."""


def newest_ok_run(run_cfg: RunConfig, config: dict[str, Any]):
    """The newest successful run of `run_cfg.name` with the same model, suite and sampling."""
    results = Path(run_cfg.results_dir)
    seen = []
    for row, result in runs_newest_first(results, run_cfg.name, status="ok"):
        if same_setup(result.config, config):
            return result, results / "runs" / row["run_id"]
        seen.append(row["run_id"])
    hint = (f"runs {', '.join(seen)} differ in model, workload or sampling: pass the overrides they ran with "
            "(e.g. workload.limit=8)") if seen else f"run `python -m harness +variant={run_cfg.name}` first"
    raise SubmitError(f"no successful run of {run_cfg.name} in {results}; {hint}")


def served_max_model_len(run_dir: Path, model_dir: Path) -> int | None:
    """The context length the run was served with: vLLM's own figure in server.log, else the
    checkpoint's max_position_embeddings (what vLLM derives when none is configured)."""
    log = run_dir / "server.log"
    if log.is_file():
        found = re.findall(r"max_seq_len=(\d+)", log.read_text(errors="replace"))
        if found:
            return int(found[-1])
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return (config.get("text_config") or config).get("max_position_embeddings")


def copy_checkpoint(model_dir: Path, out: Path) -> None:
    """Copies the servable files; recipe.json gets its absolute paths cut to folder names."""
    for pattern in CHECKPOINT_FILES:
        for path in model_dir.glob(pattern):
            shutil.copy2(path, out / path.name)
    recipe = out / "recipe.json"
    if recipe.is_file():
        recipe.write_text(json.dumps(_relative(json.loads(recipe.read_text(encoding="utf-8"))), indent=2) + "\n")


def _relative(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def write_serve_config(run_dir: Path, model_dir: Path, out: Path) -> None:
    """The run's vllm_config.yaml with `model: .` and max-model-len stated; host, port, key left out."""
    import yaml

    cfg = yaml.safe_load((run_dir / "vllm_config.yaml").read_text(encoding="utf-8")) or {}
    cfg["model"] = "."
    if not cfg.get("max-model-len"):
        cfg["max-model-len"] = served_max_model_len(run_dir, model_dir)
    for key in ("host", "port", "api-key", "tokenizer"):
        cfg.pop(key, None)
    (out / "vllm_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def reproducible(overrides: list[str]) -> list[str]:
    """The overrides that define the run, without this machine's paths, ports and keys."""
    return [o for o in overrides if not o.lstrip("+").startswith(LOCAL_KEYS) and "variant=" not in o]


def make_submission(overrides: list[str], out: Path | None = None):
    """Writes the submission folder for the variant named in `overrides` and returns it.

    Raises:
        SubmitError: no matching run, or `out` exists and is not empty.
    """
    from harness.config.schema import compose
    from harness.leaderboard.data import run_row
    from harness.record.result import config_dict, load_result
    from harness.submit.card import model_card
    from harness.submit.check import folder_size_bytes

    run_cfg = compose(overrides)
    result, run_dir = newest_ok_run(run_cfg, config_dict(run_cfg))
    model_dir = Path(str(result.serve.model_dir))
    out = out or Path(run_cfg.results_dir) / "submissions" / result.run_id
    if out.exists() and any(out.iterdir()):
        raise SubmitError(f"{out} exists and is not empty: remove it or pass --out to a new folder")
    if not (model_dir / "config.json").is_file():
        raise SubmitError(f"the served checkpoint {model_dir} is gone: "
                          f"re-run `python -m harness +variant={run_cfg.name}`")
    out.mkdir(parents=True, exist_ok=True)
    copy_checkpoint(model_dir, out)
    write_serve_config(run_dir, model_dir, out)
    baseline_id = result.gate.baseline_run_id if result.gate else None
    base_dir = Path(run_cfg.results_dir) / "runs" / str(baseline_id)
    baseline_row = run_row(load_result(base_dir), base_dir) if baseline_id and base_dir.is_dir() else None
    card = model_card(folder=out, result=result, variant_row=run_row(result, run_dir), baseline_row=baseline_row,
                      overrides=reproducible(overrides), size_bytes=folder_size_bytes(out))
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from harness.submit.check import check_folder

    parser = argparse.ArgumentParser(prog="python -m harness.submit", description=__doc__)
    parser.add_argument("overrides", nargs="+", help="Hydra overrides, e.g. +variant=fp8 workload.limit=8")
    parser.add_argument("--out", type=Path, help="submission folder (default RESULTS/submissions/<run_id>)")
    parser.add_argument("--no-launch", action="store_true", help="skip serving the folder with vLLM")
    args = parser.parse_args(argv)
    console = Console()
    try:
        folder = make_submission(args.overrides, args.out)
    except (ConfigError, SubmitError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"wrote {folder}; checking it (launching vLLM the judges' way: may take minutes)", soft_wrap=True)
    report = check_folder(folder, launch=not args.no_launch)
    console.print(f"size on disk: {report.size_bytes / 2**20:.1f} MiB")
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if report.answer is not None:
        console.print(f"served answer to one suite image: {report.answer!r}", highlight=False, soft_wrap=True)
    console.print("[green]ready to upload[/]" if report.ok else "[red]not ready: fix the problems above[/]")
    return 0 if report.ok else 1

