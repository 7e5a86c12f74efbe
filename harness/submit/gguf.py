"""The llama.cpp submission: a GGUF variant's folder as `llama-server -hf <repo>` takes it from a
repository, the llama config it asks for, and the card's llama.cpp sections.

The judges' second engine is `llama-server -hf <repo>`: llama-server picks the repository's one
model GGUF (by the quant tag at the end of its name) and the mmproj (vision projector) GGUF beside
it, and runs every other setting at its default. So the folder holds exactly those two files, the
recipe, README.md and llama_config.yaml: the options the variant's own `engine.llama_config` asks
for (`{}`: none), which are the only flags a team can ask the judges to add.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compress.gguf_config import GgufConfig
from harness.config.schema import RunConfig, to_compress_config
from harness.errors import SubmitError
from harness.preflight import GGUF_PREFIX, check_serving_engine
from harness.record.result import config_dict
from harness.serve.llama_cpp import CONFIG_NAME, gguf_files, llama_args
from harness.submit.source import Submission, card_inputs, check_out, copy_recipe, newest_ok_run, write_card

HF_COMMAND = "llama-server -hf <repo>"


def serves_gguf(run_cfg: RunConfig) -> bool:
    """Whether the variant is a GGUF for llama.cpp (its scheme or its engine says so; preflight refuses a mix)."""
    return run_cfg.engine.name == "llama_cpp" or run_cfg.compress.scheme.startswith(GGUF_PREFIX)


def quant_tag(run_cfg: RunConfig) -> str | None:
    """The llama.cpp type the variant's scheme writes its model GGUF in (Q4_K_M), None for no GGUF scheme."""
    config = to_compress_config(run_cfg.compress)
    return config.TAG if isinstance(config, GgufConfig) else None


def make_gguf_submission(run_cfg: RunConfig, overrides: list[str], out: Path | None,
                         target: str | None) -> Submission:
    """Writes the folder of a GGUF variant from its newest ok run (the GGUFs that run served).

    Raises:
        HarnessError: --target given, an engine or llama config the variant cannot run with, no
            llama.cpp build, no matching run, a run with another llama config, its GGUFs gone,
            or `out` exists and is not empty; all before any file is copied.
    """
    import yaml  # lazy: PyYAML comes with Hydra

    if target is not None:
        raise SubmitError(f"--target picks the GPU whose vLLM serves a checkpoint; {run_cfg.name} is a GGUF the "
                          f"judges serve with `{HF_COMMAND}` on their own hardware: drop --target")
    check_serving_engine(run_cfg)  # ConfigError: engine and scheme disagree, no llama.cpp build, a bad llama config
    result, run_dir = newest_ok_run(run_cfg, config_dict(run_cfg))
    llama_config = dict(run_cfg.engine.llama_config)
    measured = dict((result.config.get("engine") or {}).get("llama_config") or {})
    if measured != llama_config:
        raise SubmitError(f"the newest run of {run_cfg.name} ({result.run_id}) was measured with llama config "
                          f"{measured}, not {llama_config}: pass the engine.llama_config overrides it ran with, or "
                          f"run `python -m harness +variant={run_cfg.name}` with these")
    model, mmproj = served_ggufs(run_cfg, result)
    out = out or Path(run_cfg.results_dir) / "submissions" / result.run_id
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    for path in (model, mmproj):
        shutil.copy2(path, out / path.name)
    copy_recipe(model.parent / "recipe.json", out)
    (out / CONFIG_NAME).write_text(yaml.safe_dump(llama_config, sort_keys=False), encoding="utf-8")
    engine = dict(result.serve.engine or {})
    card = {**card_inputs(run_cfg, result, run_dir, overrides, out),
            "serve_section": serve_section(out, llama_config, engine),
            "changes": [*result.serve.changes_from_base, *sampling_changes(engine)]}
    built = built_lines(model.name, mmproj.name, engine, str(result.serve.platform or "this host"))
    submission = Submission(out, "llama_cpp", built=built, card=card, quant_tag=quant_tag(run_cfg))
    write_card(submission, None)
    return submission


def served_ggufs(run_cfg: RunConfig, result) -> tuple[Path, Path]:
    """(model GGUF, mmproj GGUF) the run served, from its variant folder in the build cache."""
    model_dir = Path(str(result.serve.model_dir or ""))
    if not result.serve.model_dir or not model_dir.is_dir():
        raise SubmitError(f"the GGUF folder run {result.run_id} served ({result.serve.model_dir}) is gone: "
                          f"re-run `python -m harness +variant={run_cfg.name}`")
    return gguf_files(model_dir)  # ServerError: the folder no longer holds one model GGUF and one mmproj


def sampling_changes(engine: Mapping[str, Any]) -> list[str]:
    """What llama-server's own sampling defaults change against vLLM serving the base model, which
    filters nothing by min_p: llama-server applies its min_p to every request that does not send one."""
    min_p = (engine.get("sampling") or {}).get("min_p")
    if not min_p:
        return []
    return [f"min_p: llama-server filters tokens below min_p {min_p} (its default) in every request that does not "
            "send min_p, the competition's included; vLLM serving the base model uses 0"]


def judges_command(llama_config: Mapping[str, Any]) -> str:
    """The judges' command line with the folder's llama config as its flags."""
    return " ".join([HF_COMMAND, *llama_args(llama_config)])


def built_lines(model: str, mmproj: str, engine: Mapping[str, Any], platform: str) -> tuple[str, ...]:
    """What the folder is for and what measured it."""
    build = engine.get("build_json") or {}
    made = f"llama.cpp {build.get('commit', engine.get('build', '?'))} ({build.get('flavour', '?')} build" + (
        f", {build['source']})" if build.get("source") else ")")
    return (
        f"Engine: llama.cpp's llama-server, as the judges run it: `{HF_COMMAND}` on this folder uploaded as a "
        f"Hugging Face model repository picks `{model}` (the one model GGUF; its name ends in its quant tag) "
        f"and `{mmproj}`, the vision projector beside it.",
        f"No target GPU: llama-server serves a GGUF on CPUs and GPUs alike. Measured on {platform} with {made}.",
    )


def serve_section(folder: Path, llama_config: Mapping[str, Any], engine: Mapping[str, Any]) -> list[str]:
    """The card's serve settings for llama.cpp: the llama config, the judges' command, and what
    llama-server used in the measured run, as read back from it (result.json serve.engine)."""
    asked = ("the llama-server options this model asks for, as long option names without their dashes"
             if llama_config else "`{}`: this model asks for no llama-server option")
    return [
        f"## Serve settings ({CONFIG_NAME})", "", "```yaml",
        (folder / CONFIG_NAME).read_text(encoding="utf-8").rstrip(), "```", "",
        f"The judges' command: `{judges_command(llama_config)}`. {CONFIG_NAME} holds {asked}; the judges pass no "
        "other flag, so every setting it does not name is llama-server's default (e.g. context, slots, threads, "
        "batch sizes, GPU layers, flash attention), and the chat template is the one inside the model GGUF. The "
        "repository holds no preset.ini: with one at its root, `-hf` downloads only that file and starts "
        "llama-server in router mode.", "",
        *_measured_settings(engine),
    ]


def _measured_settings(engine: Mapping[str, Any]) -> list[str]:
    if not engine.get("n_ctx"):
        return []
    gpu = engine.get("gpu_layers") or "none (a build without a GPU backend)"
    flash = engine.get("flash_attn_setting")
    flash = f"{flash} (resolved: {engine['flash_attn']})" if flash and engine.get("flash_attn") else flash or "-"
    sampling = ", ".join(f"{k} {v}" for k, v in (engine.get("sampling") or {}).items())
    return [
        f"What llama-server used in the measured run (read back from it, build {engine.get('build')}; threads, GPU "
        f"layers and flash attention follow the hardware): context {engine['n_ctx']} tokens per slot, "
        f"{engine.get('total_slots')} slots, {engine.get('threads')} threads, batch {engine.get('batch')}, "
        f"micro-batch {engine.get('ubatch')}, flash attention {flash}, GPU layers {gpu}, KV cache "
        f"{engine.get('kv_cache_type') or '-'}.",
        f"For each sampling field a request leaves out, llama-server uses: {sampling or '-'}.", "",
    ]
