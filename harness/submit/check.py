"""Checks a submission folder the way judges will use it: files, quantization scope, paths, secrets, the target's
vLLM keys and loader, and a real launch where this host can serve it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.schemes import LayerSpec
from harness.submit.loader import loader_problems
from harness.submit.problem import Problem
from harness.submit.target import HostLaunch, Target, load_target

CONFIG = "vllm_config.yaml"
# Modules the competition's quality depends on and that must stay in their original precision.
PROTECTED = ("vision_tower", "audio_tower", "embed_vision", "embed_audio", "multi_modal_projector",
             "embed_tokens", "lm_head")
# Tensors compressed-tensors stores for a quantized module (beside or instead of `weight`).
QUANT_SUFFIXES = ("weight_scale", "weight_packed", "weight_zero_point", "weight_global_scale", "input_scale")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".jinja", ".txt")
# Tokenizer vocabularies may hold strings like "/home" as tokens: only secrets are looked for there.
VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:work|home|tmp|root|mnt|scratch|Users|var/folders)/")
SECRETS = (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
           re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"))
MACHINE_KEYS = ("host", "port", "api-key", "api_key", "ssl-keyfile", "ssl-certfile")
# Settings only a CPU host needs (harness.serve.capabilities chooses them there): in the folder they
# would change how the judges' GPU serves it. CPU KV-cache space is an environment variable
# (VLLM_CPU_KVCACHE_SPACE) and the CPU weight fallback a checkpoint: neither can be a key here.
HOST_ONLY = {"enforce-eager": (True, "turns CUDA graphs off on the judges' GPU (it is the CPU default, where "
                                     "graphs do not exist)")}


@dataclass(frozen=True)
class CheckReport:
    """What the validator found.

    Attributes:
        problems: every problem found (empty when the folder passes).
        size_bytes: total size of the files in the folder.
        answer: the served model's answer to one suite image request (None if not launched).
        validation: what was checked, one line per kind (static checks; the launch or why none ran).
    """

    problems: tuple[Problem, ...]
    size_bytes: int
    answer: str | None = None
    validation: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def folder_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _required(folder: Path) -> list[Problem]:
    have = {p.name for p in folder.iterdir()}
    problems = []
    needs = [
        (("config.json",), "copy the checkpoint's config.json"),
        ((CONFIG,), "write the serve settings with `model: .` (python -m harness.submit does)"),
        (("README.md",), "add the model card (python -m harness.submit writes it from measured results)"),
        (("tokenizer.json", "tokenizer.model"), "copy the tokenizer files from the checkpoint"),
        (("tokenizer_config.json",), "copy tokenizer_config.json from the checkpoint"),
        (("processor_config.json", "preprocessor_config.json"), "copy the image processor config from the checkpoint"),
    ]
    for names, fix in needs:
        if not have.intersection(names):
            problems.append(Problem(" or ".join(names), "missing", fix))
    if not any(n.endswith(".safetensors") for n in have):
        problems.append(Problem("*.safetensors", "no weights", "copy the (compressed) safetensors files"))
    if not have.intersection({"chat_template.jinja", "chat_template.json"}) and "chat_template" not in _json(
            folder / "tokenizer_config.json"):
        problems.append(Problem("chat_template.jinja", "no chat template",
                                "copy chat_template.jinja from the checkpoint"))
    return problems


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _module_tensors(folder: Path) -> dict[str, set[str]]:
    """Module name -> names of the tensors stored for it, from the safetensors headers."""
    from safetensors import safe_open

    modules: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                module, _, tensor = key.rpartition(".")
                modules.setdefault(module, set()).add(tensor)
    return modules


def quantization_problems(folder: Path) -> list[Problem]:
    """Towers, embeddings and lm_head must be ignored by quantization_config and stored unquantized."""
    from compress.configs import VLM_IGNORE
    from compress.plan import matches

    qc = _json(folder / "config.json").get("quantization_config")
    if not qc:
        return []  # not quantized: nothing can be quantized by mistake
    ignore = list(qc.get("ignore") or [])
    targets = [t for group in (qc.get("config_groups") or {}).values() for t in group.get("targets", [])]
    problems = [Problem("config.json", f"quantization_config.ignore lacks {p!r}",
                        f"add {p!r} to quantization_config.ignore (compress.configs.VLM_IGNORE lists them all)")
                for p in VLM_IGNORE if p not in ignore]
    modules = _module_tensors(folder)
    caught: dict[tuple[str, str], list[str]] = {}  # (file to fix, protected part) -> module names
    for name in sorted(set(modules) | {"lm_head"}):
        part = next((p for p in PROTECTED if p in name), None)
        if part is None:
            continue
        targeted = any(matches(name, t) for t in targets) and not any(matches(name, p) for p in ignore)
        if targeted or modules.get(name, set()).intersection(QUANT_SUFFIXES):
            caught.setdefault(("config.json" if targeted else "*.safetensors", part), []).append(name)
    for (file, part), names in caught.items():
        problems.append(Problem(file, f"{len(names)} {part} module(s) would be quantized (e.g. {names[0]})",
                                "rebuild the checkpoint with the VLM ignore list (towers, embeddings and "
                                "lm_head stay unquantized)"))
    return problems


def pruned_problems(folder: Path) -> list[Problem]:
    """A FLAP-pruned checkpoint needs this project's vLLM plugin, which stock vLLM lacks."""
    config = _json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if not config.get("flap_pruned"):
        return []
    return [Problem("config.json", "is FLAP-pruned (per-layer FFN widths, a down_proj bias): the judges' stock "
                    "`vllm serve` cannot build it without this project's plugin (compress/vllm_plugin)",
                    "submit a variant stock vLLM serves, or agree with the judges that they install the plugin "
                    "(pip install of this project) and say so in the README")]


def serve_config_problems(folder: Path, target: Target) -> list[Problem]:
    """vllm_config.yaml: serves the folder itself, states max-model-len, holds nothing of this machine or host,
    and only keys the target's `vllm serve` accepts (an unknown key stops it before it loads anything)."""
    import yaml

    path = folder / CONFIG
    if not path.is_file():
        return []  # reported as missing already
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        return [Problem(CONFIG, f"is not valid YAML ({err})", "rewrite it as `key: value` lines")]
    problems = []
    if cfg.get("model") != ".":
        problems.append(Problem(CONFIG, f"model is {cfg.get('model')!r}, not '.'",
                                "set `model: .` (judges run vllm serve inside the folder)"))
    if not cfg.get("max-model-len") and not cfg.get("max_model_len"):
        problems.append(Problem(CONFIG, "max-model-len is not set",
                                "add `max-model-len: N`, the length the run was measured with"))
    for key in MACHINE_KEYS:
        if key in cfg:
            problems.append(Problem(CONFIG, f"holds {key!r}, a setting of this machine",
                                    f"remove {key!r}; judges pass it on the command line"))
    for key, (value, why) in HOST_ONLY.items():
        if cfg.get(key) == value:
            problems.append(Problem(CONFIG, f"holds `{key}: {json.dumps(value)}`, a setting of the build host: "
                                    f"it {why}", f"remove {key!r} (python -m harness.submit writes the target's "
                                    "settings)"))
    for key in cfg:
        if str(key).split(".")[0].replace("_", "-") not in target.keys:  # vLLM reads key_name as key-name
            problems.append(Problem(CONFIG, f"key {key!r} is not an option of vLLM {target.vllm_version}'s "
                                    f"`vllm serve` ({target.record}), so the judges' server would refuse to start",
                                    f"remove it, or use the name vLLM {target.vllm_version} has for it"))
    return problems


def text_problems(folder: Path) -> list[Problem]:
    """Absolute paths of this machine and secrets in any text file of the folder."""
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(folder))
        for pattern in SECRETS:
            if pattern.search(text):
                problems.append(Problem(rel, "contains what looks like a secret key",
                                        "remove the key; never ship credentials"))
        if path.name not in VOCAB_FILES and (hit := ABSOLUTE_PATH.search(text)):
            line = text[text.rfind("\n", 0, hit.start()) + 1:text.find("\n", hit.start())].strip()[:120]
            problems.append(Problem(rel, f"holds an absolute path ({line})",
                                    "replace it with a path relative to the folder or a model name"))
    return problems


def check_folder(folder: Path | str, *, launch: bool = True, startup_timeout_s: float = 600.0,
                 target: Target | None = None, host: HostLaunch | None = None,
                 expect: LayerSpec | None = None) -> CheckReport:
    """Every check; the server is launched only when the static checks pass and this host can serve the folder.

    Args:
        folder: the submission folder.
        launch: also serve it with `vllm serve --config vllm_config.yaml` and ask one
            suite image question.
        startup_timeout_s: how long the server may take to become ready.
        target: the GPU and pinned vLLM the folder is for (default: the competition's).
        host: whether and how this host can serve it (harness.submit.target.host_launch); None
            launches it as it is.
        expect: the weights the variant names; a folder holding others is refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return CheckReport((Problem(str(folder), "is not a folder", "pass the submission folder"),), 0)
    target = target or load_target()
    loader, checked = loader_problems(folder, target, expect)
    problems = (_required(folder) + serve_config_problems(folder, target) + quantization_problems(folder)
                + pruned_problems(folder) + text_problems(folder) + loader)
    size = folder_size_bytes(folder)
    ran = (f"static, for {target.describe()}: files, quantization scope, paths and secrets; every "
           f"vllm_config.yaml key an option of vLLM {target.vllm_version}'s `vllm serve` ({target.record}) and "
           f"no host-only setting; checkpoint: {checked}")
    if problems:
        return CheckReport(tuple(problems), size, validation=(ran, "not launched: the static checks found problems"))
    if not launch:
        return CheckReport((), size, validation=(ran, "not launched (--no-launch)"))
    if host is not None and host.reason:
        return CheckReport((), size, validation=(ran, f"not launched on this host ({host.platform.describe()}), "
                                                      f"which cannot serve it: {host.reason}"))
    problem, answer, served = _launch(folder, host, startup_timeout_s)
    return CheckReport((problem,) if problem else (), size, answer, validation=(ran, served))


def _launch(folder: Path, host: HostLaunch | None, startup_timeout_s: float) -> tuple[Problem | None, str | None, str]:
    """Serves the folder the judges' way, this host's flags (if any) on the command line only.

    Returns:
        The problem found (None when it answered), the answer, and a line saying what ran.
    """
    from harness.submit.launch import LaunchError, ask_one_image, cli_flags

    flags = cli_flags(host.flags if host else {})
    extra = f" {' '.join(flags)} (this host's settings, on the command line only: not in the folder)" if flags else ""
    where = host.platform.describe() if host else "this host"
    served = f"launched on {where}: `vllm serve --config vllm_config.yaml`{extra}"
    try:
        answer = ask_one_image(folder, flags=flags, startup_timeout_s=startup_timeout_s)
    except LaunchError as err:
        return Problem(CONFIG, str(err), err.fix), None, served + ": failed"
    if not answer.strip():
        return (Problem(CONFIG, "the served model answered an image request with empty text",
                        "check the chat template and the weights (serve it by hand and look)"), answer,
                served + ": answered with empty text")
    return None, answer, served + ": started and answered one suite image request"
