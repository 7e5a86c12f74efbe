"""Typed run configuration: schemas for each Hydra group and the one DictConfig -> dataclass step."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.config.ranges import check_ranges
from harness.config.typed import build_dataclass
from harness.errors import ConfigError
from harness.score.lmeval.settings import LmEvalConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
# Chat templates shipped with the harness: serve.chat_template=NAME picks TEMPLATES_DIR/NAME.jinja.
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "assets" / "templates"


@dataclass(frozen=True)
class ModelConfig:
    """The base model: ``path`` is a local directory or a hub id; None means the tiny model."""

    name: str
    path: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Pruned FFN widths are rounded to this multiple (conf/compress/flap*.yaml read it).
    prune_multiple: int = 128
    # llama-server options every GGUF variant of this model ships in its llama config (and is
    # measured with); the variant's or command line's engine.llama_config wins key by key.
    llama_config: Mapping[str, Any] = field(default_factory=dict)

    def resolved_path(self) -> str:
        """The directory or hub id to load, with None mapped to the committed tiny model."""
        if self.path is not None:
            return self.path
        from harness.tiny import DEFAULT_MODEL_DIR  # lazy: the tiny package is optional here

        return str(DEFAULT_MODEL_DIR)


@dataclass(frozen=True)
class CompressSpec:
    """A compression scheme name and its parameters, as written in conf/compress/*.yaml."""

    scheme: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_none(self) -> bool:
        return self.scheme == "none"


@dataclass(frozen=True)
class ServeConfig:
    """vLLM server settings; see conf/serve/default.yaml for what each field means."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    max_model_len: int | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    enforce_eager: bool | None = None
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.9
    limit_mm_per_prompt: Mapping[str, int] = field(default_factory=lambda: {"image": 1})
    max_soft_tokens: int | None = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # a Jinja file (--chat-template), made absolute by to_run_config
    generation_config: Mapping[str, Any] = field(default_factory=dict)  # --override-generation-config
    trust_remote_code: bool = False
    cpu_kvcache_space_gib: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 600.0
    allow_fallback: tuple[Literal["kv_cache_dtype", "enforce_eager", "weights"], ...] = ()


@dataclass(frozen=True)
class EngineConfig:
    """Which server the variant is served with, launched as the judges launch it.

    ``vllm``: `vllm serve --config vllm_config.yaml`, from the serve group's settings.
    ``llama_cpp``: `llama-server` on a GGUF variant folder (the model GGUF and the mmproj beside
    it, as `llama-server -hf <repo>` resolves a repository), with llama-server's own defaults
    except the options in ``llama_config``: the submission's llama config, long option names
    without the leading dashes (``ctx-size: 8192``, ``flash-attn: "on"``; ``true`` passes a bare
    flag, ``false`` or null leaves the option out). ``startup_timeout_s``: replaces
    serve.startup_timeout_s for this engine (null: keep it).
    """

    name: Literal["vllm", "llama_cpp"] = "vllm"
    llama_config: Mapping[str, Any] = field(default_factory=dict)
    startup_timeout_s: float | None = None


@dataclass(frozen=True)
class WorkloadConfig:
    """Which suite samples are replayed and how requests arrive."""

    name: str = "synthetic"
    seed: int = 0
    split: str = "test"  # synthetic: train | test; hf: the dataset's split name
    limit: int = 40
    mode: Literal["sequential", "concurrent", "poisson"] = "sequential"
    concurrency: int = 1
    rate_rps: float = 1.0
    warmup_requests: int = 0
    request_timeout_s: float = 120.0
    # Share (0..1) of measured requests that may fail before the run is recorded failed.
    max_error_rate: float = 0.1
    # Hugging Face suites (source: hf): see harness/replay/workloads/hf.py and conf/workload/chartqa.yaml.
    source: Literal["synthetic", "hf"] = "synthetic"
    dataset: str | None = None
    path: str | None = None
    subset: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)
    filters: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = "{question}"
    metric: str = "exact"
    offset: int = 0
    image_max_side_px: int | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings and which of them each request carries.

    ``send``: "explicit" sends temperature, top_p, top_k, max_tokens and a seed derived from the
    sample id with every request; "messages" sends only the model, the messages and the stream
    options, as a judge who sends no sampling would: the server then fills every field from the
    served checkpoint's generation_config.json (after serve.generation_config), else from vLLM's
    defaults, and sizes answers by max_new_tokens or the context left (harness.serve.generation).
    """

    send: Literal["explicit", "messages"] = "explicit"
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    max_tokens: int = 64
    seed: int = 0
    ignore_eos: bool = False  # benchmarks only: every answer runs to max_tokens


@dataclass(frozen=True)
class EnergyConfig:
    """Which meter reads energy, and the CPU power figures the modeled meter assumes."""

    meter: Literal["auto", "nvml", "rapl", "modeled"] = "auto"
    idle_s: float | None = None  # None: IDLE_GPU_S on a GPU, IDLE_CPU_S on a CPU
    sample_hz: float = 10.0
    cpu_idle_w: float = 20.0
    cpu_active_w: float = 60.0


@dataclass(frozen=True)
class QualityConfig:
    """The quality gate: variant score >= threshold x baseline score, under ``rule``."""

    baseline_variant: str = "bf16"
    rule: Literal["mean", "every_task"] = "mean"
    threshold: float = 0.8
    bootstrap_n: int = 50_000
    confidence: float = 0.95
    seed: int = 0
    # harness: score the suite replay; lm_eval: score lm-eval tasks run on the same server.
    engine: Literal["harness", "lm_eval"] = "harness"
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; the only configuration object code below config.py sees."""

    name: str
    model: ModelConfig
    compress: CompressSpec
    serve: ServeConfig
    workload: WorkloadConfig
    sampling: SamplingConfig
    energy: EnergyConfig
    quality: QualityConfig
    engine: EngineConfig = field(default_factory=EngineConfig)
    results_dir: str = "results"
    cache_dir: str = ".cache/variants"
    trials: int = 3
    trial_server: Literal["auto", "shared", "fresh"] = "auto"
    trial_order: Literal["abba", "alternate"] = "abba"


_GROUP_SCHEMAS = {
    "model": ModelConfig,
    "serve": ServeConfig,
    "workload": WorkloadConfig,
    "sampling": SamplingConfig,
    "energy": EnergyConfig,
    "quality": QualityConfig,
    "engine": EngineConfig,
}


def to_run_config(cfg: Any) -> RunConfig:
    """Converts a composed Hydra config (DictConfig or plain mapping) into a RunConfig once.

    Raises:
        ConfigError: a key is unknown, missing, of the wrong type or outside its allowed
            values; the message names the key and lists what is accepted.
    """
    data = _to_container(cfg)
    compress = data.get("compress")
    if isinstance(compress, Mapping):
        data = {**data, "compress": _compress_spec(compress)}
    run = build_dataclass(RunConfig, data)
    if run.serve.chat_template is not None:
        run = dataclasses.replace(run, serve=dataclasses.replace(
            run.serve, chat_template=str(resolve_chat_template(run.serve.chat_template))))
    if run.engine.name == "llama_cpp" and run.model.llama_config:
        run = dataclasses.replace(run, engine=dataclasses.replace(
            run.engine, llama_config={**run.model.llama_config, **run.engine.llama_config}))
    _check_values(run)
    return run


def resolve_chat_template(value: str) -> Path:
    """serve.chat_template as an absolute file: a path (relative ones from the directory the command
    was run in, as Hydra's job.chdir is false), else the name of a template in TEMPLATES_DIR.

    Raises:
        ConfigError: neither a file nor a shipped template's name.
    """
    path = Path(value).expanduser()
    path = path if path.is_absolute() else _original_cwd() / path
    if path.is_file():
        return path.resolve()
    if (shipped := TEMPLATES_DIR / f"{value}.jinja").is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja")))
    raise ConfigError(f"serve.chat_template={value}: no such file (relative paths are read from {_original_cwd()}): "
                      f"give a Jinja chat template file or one of the shipped templates: {names}")


def _original_cwd() -> Path:
    """The directory the command was run in, even inside a Hydra job that changed directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd())
    return Path.cwd()


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Composes conf/config.yaml with Hydra overrides (e.g. ``["+variant=fp8"]``) into a RunConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    with _own_global_hydra(), initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        except MissingConfigException as err:
            raise ConfigError(_missing_option_message(err)) from err
        except ConfigCompositionException as err:
            raise ConfigError(_bad_override_message(err)) from err
    return to_run_config(cfg)


@contextlib.contextmanager
def _own_global_hydra() -> Iterator[None]:
    """Lets compose() run inside a @hydra.main app: set its Hydra aside, then put it back."""
    from hydra.core.global_hydra import GlobalHydra

    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        # initialize_config_dir swaps the singleton on exit: look it up again, do not reuse it.
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def group_options(group: str) -> list[str]:
    """Names of the YAML options in conf/<group>/ (e.g. the variants), sorted."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def to_compress_config(spec: CompressSpec) -> Any:
    """The compress package's config dataclass for ``spec`` (None for scheme none).

    Raises:
        ConfigError: the scheme is unknown or a parameter is not a field of its config.
    """
    if spec.is_none:
        return None
    from compress.configs import config_from_name  # lazy; this module imports no torch

    try:
        return config_from_name(spec.scheme, **spec.params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"compress (scheme {spec.scheme}): {err}") from err


def _compress_spec(group: Mapping[str, Any]) -> dict[str, Any]:
    if "scheme" not in group:
        raise ConfigError("compress.scheme is missing; pick one of: " + ", ".join(group_options("compress")))
    params = {k: v for k, v in group.items() if k != "scheme"}
    return {"scheme": group["scheme"], "params": params}


def _check_values(run: RunConfig) -> None:
    to_compress_config(run.compress)  # unknown schemes and parameters fail here, before any work
    from harness.replay.workloads import check_workload  # lazy: reads no data, imports no datasets

    check_workload(run.workload)
    budget = run.serve.max_soft_tokens
    if budget is not None and budget not in SOFT_TOKEN_BUDGETS:
        raise ConfigError(f"serve.max_soft_tokens={budget} is not a Gemma 4 budget; use one of {SOFT_TOKEN_BUDGETS}")
    if budget is not None and run.model.path is None:  # the embedded tiny model
        from harness.tiny import trained_budgets

        if budget not in (trained := trained_budgets()):
            raise ConfigError(f"serve.max_soft_tokens={budget}: the embedded tiny model was trained at budgets "
                              f"{', '.join(map(str, trained))} only; pick one of them, or serve a real model "
                              f"(model=gemma4_e4b) to sweep larger budgets")
    positive = {
        "trials": run.trials,
        "workload.limit": run.workload.limit,
        "workload.concurrency": run.workload.concurrency,
        "workload.rate_rps": run.workload.rate_rps,
        "sampling.max_tokens": run.sampling.max_tokens,
        "workload.request_timeout_s": run.workload.request_timeout_s,
        "serve.startup_timeout_s": run.serve.startup_timeout_s,
        "energy.sample_hz": run.energy.sample_hz,
        "engine.startup_timeout_s": 1 if run.engine.startup_timeout_s is None else run.engine.startup_timeout_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    for key, value in {"workload.warmup_requests": run.workload.warmup_requests,
                       "energy.idle_s": run.energy.idle_s or 0,
                       "quality.bootstrap_n": run.quality.bootstrap_n}.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= run.workload.max_error_rate <= 1.0:
        raise ConfigError(f"workload.max_error_rate must be a share in [0, 1], got {run.workload.max_error_rate}")
    if not 0.0 < run.quality.threshold <= 1.0:
        raise ConfigError(f"quality.threshold must be in (0, 1], got {run.quality.threshold}")
    if not 0.0 < run.serve.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"serve.gpu_memory_utilization must be in (0, 1], got {run.serve.gpu_memory_utilization}")
    check_ranges(run)


def _missing_option_message(err: Exception) -> str:
    """Hydra's text for a missing option, plus the options of that group when Hydra omits them."""
    text = str(err)
    if "Available options" in text:
        return text
    for group in ("variant", "model", "compress", "engine", "serve", "workload", "sampling", "energy", "quality"):
        if f"'{group}/" in text:
            return f"{text}\nAvailable options in '{group}': {', '.join(group_options(group))}"
    return text


def _bad_override_message(err: Exception) -> str:
    """Hydra's text for an override of a missing key, plus the keys that group accepts."""
    text = str(err)
    match = re.search(r"Could not override '(\w+)\.", text)
    schema = _GROUP_SCHEMAS.get(match.group(1)) if match else None
    if schema is None:
        return text
    return f"{text}\n'{match.group(1)}' accepts: {', '.join(f.name for f in dataclasses.fields(schema))}"


def _to_container(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_get_node"):
        return dict(cfg)
    from omegaconf import OmegaConf  # lazy: only callers holding a DictConfig need it

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
