"""`python -m harness.submit +variant=NAME [overrides] [--target l4] [--out DIR]`: an upload folder for the judges'
GPU, made from the newest ok run and validated as far as this host can (a GGUF variant: for `llama-server -hf`,
harness.submit.gguf)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compress.configs import CompressConfig
from compress.schemes import LayerSpec
from harness.build.variant import build_variant, check_build
from harness.config.schema import CompressSpec, RunConfig, to_compress_config
from harness.errors import HarnessError, SubmitError
from harness.serve.capabilities import PlatformCheck, check_platform
from harness.serve.vllm import vllm_args
from harness.submit.gguf import make_gguf_submission, serves_gguf
from harness.submit.loader import describe
from harness.submit.source import Submission, card_inputs, check_out, copy_recipe, newest_ok_run, write_card
from harness.submit.target import DEFAULT_TARGET, TARGETS, HostLaunch, Target, host_launch, load_target

# Checkpoint files that make up a servable model; anything else (training logs, caches) stays behind.
CHECKPOINT_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                    "recipe.json")
# vllm_config.yaml keys that name the same thing in the run and in the folder, each written its own way.
SAME_WHEREVER = ("model", "served-model-name", "chat-template")


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
            if path.name != "recipe.json":
                shutil.copy2(path, out / path.name)
    copy_recipe(model_dir / "recipe.json", out)


def expected_layer(spec: CompressSpec) -> LayerSpec | None:
    """The weights a scheme stores (None for the base model and for multi-step schemes)."""
    config = to_compress_config(spec)
    return config.layer_spec() if isinstance(config, CompressConfig) else None


def target_checkpoint(run_cfg: RunConfig, result, check: PlatformCheck, log=print) -> tuple[Path, Mapping | None]:
    """The checkpoint to ship, and the weights fallback the run served instead (None when it served these).

    A run on a host without the variant's weight kernel served a fallback scheme (on a CPU,
    per-channel FP8 with dynamic activations for per-tensor FP8): then the variant's own scheme
    for the target is built (or taken from the build cache) from the same base model.
    """
    fallback = next((f for f in result.serve.fallbacks if f.get("setting") == "weights"), None)
    if fallback is None:
        model_dir = Path(str(result.serve.model_dir))
        if not (model_dir / "config.json").is_file():
            raise SubmitError(f"the served checkpoint {model_dir} is gone: "
                              f"re-run `python -m harness +variant={run_cfg.name}`")
        return model_dir, None
    spec = check.compress or run_cfg.compress
    check_build(run_cfg, spec)
    return build_variant(run_cfg, spec, log=log), fallback


def target_serve_config(run_cfg: RunConfig, check: PlatformCheck, served: Mapping[str, Any], run_dir: Path,
                        model_dir: Path) -> dict[str, Any]:
    """The variant's serve settings as the target's platform check resolves them (CUDA graphs on, an FP8
    KV cache where asked), with `model: .`, and the served name and context length of the run (`served`:
    the run's vllm_config.yaml)."""
    name = served.get("served-model-name") or run_cfg.model.name
    cfg = vllm_args(".", check.serve, served_model_name=name, dtype=run_cfg.model.dtype)
    if not cfg.get("max-model-len"):
        cfg["max-model-len"] = served_max_model_len(run_dir, model_dir)
    return cfg


def place_chat_template(cfg: dict[str, Any], out: Path) -> None:
    """A `chat-template` file of this machine becomes a copy in the folder, named relative to it
    (the judges run `vllm serve` inside the folder, where an absolute path of ours means nothing)."""
    template = cfg.get("chat-template")
    if not template or not Path(template).is_file():
        return
    name = Path(template).name if Path(template).name != "chat_template.jinja" else "served_chat_template.jinja"
    shutil.copy(template, out / name)
    cfg["chat-template"] = name


def built_lines(target: Target, host: HostLaunch, run_yaml: Mapping[str, Any], cfg: Mapping[str, Any],
                fallback: Mapping | None, expect: LayerSpec | None) -> tuple[str, ...]:
    """What the folder is for, and each way it differs from what the run served on this host."""
    def setting(key: str, values: Mapping[str, Any]) -> str:
        return f"`{key}: {json.dumps(values[key])}`" if key in values else "no such key (vLLM's default)"

    lines = [f"Target: {target.describe()}. Built on {host.platform.describe()}."]
    changed = [f"{setting(k, run_yaml)} (the folder has {setting(k, cfg)})"
               for k, v in run_yaml.items() if k not in SAME_WHEREVER and cfg.get(k) != v]
    lines.append("Serve settings of the measured run on this host that are not the target's, left out of the "
                 "folder: " + ("; ".join(changed) if changed else "none") + ".")
    if fallback is not None:
        lines.append(f"Weights: the measured run served {fallback['effective']}, this host's fallback, because "
                     f"{fallback['reason']}. The weights here are the variant's own scheme"
                     f"{f' ({describe(expect)})' if expect else ''}, built for the target from the same base model "
                     "by the same compress code; they were not measured on this host, so measure them on the target "
                     "before relying on the figures below.")
    return tuple(lines)


def make_submission(overrides: list[str], out: Path | None = None, target: str | None = None,
                    log=print) -> Submission:
    """Writes the submission folder for the variant named in `overrides`: for `target` (default
    the competition's GPU) when vLLM serves it, for `llama-server -hf` when it is a GGUF variant.

    Raises:
        HarnessError: no matching run, no record of the target's vLLM, a variant the target
            cannot serve, a failed build, or `out` exists and is not empty.
    """
    import yaml  # lazy: PyYAML comes with vLLM and Hydra

    from harness.config.schema import compose
    from harness.record.result import config_dict

    run_cfg = compose(overrides)
    if serves_gguf(run_cfg):
        return make_gguf_submission(run_cfg, overrides, out, target)
    target = target or DEFAULT_TARGET
    gpu = load_target(target)
    result, run_dir = newest_ok_run(run_cfg, config_dict(run_cfg))
    check = check_platform(run_cfg, gpu.platform)  # PlatformError: the target lacks the variant's kernels
    out = out or Path(run_cfg.results_dir) / "submissions" / result.run_id
    check_out(out)
    model_dir, fallback = target_checkpoint(run_cfg, result, check, log)
    served = yaml.safe_load((run_dir / "vllm_config.yaml").read_text(encoding="utf-8")) or {}
    cfg = target_serve_config(run_cfg, check, served, run_dir, model_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy_checkpoint(model_dir, out)
    place_chat_template(cfg, out)
    (out / "vllm_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    host = host_launch(run_cfg, check)
    expect = expected_layer(check.compress or run_cfg.compress)
    built = built_lines(gpu, host, served, cfg, fallback, expect)
    card = {**card_inputs(run_cfg, result, run_dir, overrides, out), "changes": changes_for_judges(run_cfg, out, cfg),
            "submit_args": ("--target", target) if target != DEFAULT_TARGET else ()}
    submission = Submission(out, "vllm", gpu, host, expect, built, card)
    write_card(submission, None)
    return submission


def changes_for_judges(run_cfg: RunConfig, folder: Path, cfg: dict[str, Any]) -> list[str]:
    """How the folder's generation config and chat template change what the judges' server does,
    against the base model the variant was built from (harness.serve.generation.changes_from_base)."""
    from harness.build.variant import local_model_dir
    from harness.errors import BuildError
    from harness.serve.generation import changes_from_base

    try:
        base = local_model_dir(run_cfg.model.resolved_path())
    except BuildError as err:
        return [f"not checked: the base model is not available here ({err})"]
    return [str(change) for change in changes_from_base(folder, base, cfg)]


def check_submission(submission: Submission, launch: bool, say=print):
    """The folder's check for the engine that serves it (static, then a launch the judges' way)."""
    from harness.submit.check import check_folder
    from harness.submit.gguf_check import check_gguf_folder

    if submission.engine == "llama_cpp":
        say("checking it" + (" (launching llama-server the judges' way)" if launch else ""))
        return check_gguf_folder(submission.folder, launch=launch, expect_tag=submission.quant_tag)
    say("checking it" + ("" if not launch or submission.host.reason else
                         " (launching vLLM the judges' way: may take minutes)"))
    return check_folder(submission.folder, launch=launch, target=submission.target, host=submission.host,
                        expect=submission.expect)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m harness.submit", description=__doc__)
    parser.add_argument("overrides", nargs="+", help="Hydra overrides, e.g. +variant=fp8 workload.limit=8")
    parser.add_argument("--out", type=Path, help="submission folder (default RESULTS/submissions/<run_id>)")
    parser.add_argument("--target", choices=sorted(TARGETS),
                        help=f"the GPU the judges serve it on with vLLM (default {DEFAULT_TARGET}, the competition's; "
                             "not for GGUF variants, which llama-server serves anywhere)")
    parser.add_argument("--no-launch", action="store_true",
                        help="skip serving the folder (with vLLM, or llama-server for a GGUF variant)")
    args = parser.parse_args(argv)
    console = Console()

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    try:
        submission = make_submission(args.overrides, args.out, args.target, log=say)
    except HarnessError as err:
        say(f"[red]error:[/] {err}")
        return 2
    say(f"wrote {submission.folder}")
    for line in submission.built:
        say(f"  {line}")
    report = check_submission(submission, launch=not args.no_launch, say=say)
    write_card(submission, report.validation)
    say(f"size on disk: {report.size_bytes / 2**20:.1f} MiB")
    for line in report.validation:
        say(f"validation: {line}")
    for problem in report.problems:
        say(f"[red]problem:[/] {problem}")
    if report.answer is not None:
        say(f"served answer to one suite image: {report.answer!r}")
    console.print("[green]ready to upload[/]" if report.ok else "[red]not ready: fix the problems above[/]")
    return 0 if report.ok else 1
