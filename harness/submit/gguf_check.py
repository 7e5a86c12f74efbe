"""Checks a GGUF submission folder the way the judges use it: `llama-server -hf <repo>` on the folder
uploaded as a repository, with llama_config.yaml's options as the only flags.

Statically: the files `-hf` picks (one model GGUF whose name ends in the type it holds, one mmproj),
the chat template inside the model GGUF, the llama config, nothing of vLLM's and no preset.ini,
paths and secrets. Then llama-server itself picks the files from the folder laid out as that
repository (harness.submit.launch.ask_one_image_hf) and answers one suite image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compress.gguf import gguf_module
from harness.serve.capabilities import detect_platform
from harness.serve.llama_cpp import CONFIG_NAME, check_llama_config, server_help
from harness.serve.llama_cpp_home import LlamaCppMissing
from harness.submit.check import CheckReport, folder_size_bytes, text_problems
from harness.submit.launch import LaunchError, ask_one_image_hf
from harness.submit.problem import Problem

# Substrings that make `-hf` take a GGUF for something other than the model (llama.cpp common/download.cpp,
# gguf_filename_is_model): the vision projector, an importance matrix, speculative-decoding drafts.
NOT_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
# Files that must not be in the repository, and why.
FORBIDDEN = {
    "vllm_config.yaml": "is vLLM's serve config, but this folder is a GGUF for llama-server",
    "preset.ini": "makes `llama-server -hf <repo>` download only it and start in router mode",
}
_TAG = re.compile(r"-([A-Za-z0-9_]+)\.gguf$")


def gguf_problems(folder: Path, expect_tag: str | None = None) -> list[Problem]:
    """Every static problem of a GGUF folder; `expect_tag`: the type the variant names (e.g. Q4_K_M)."""
    have = {p.name for p in folder.iterdir()}
    problems = [Problem(name, why, f"remove {name}") for name, why in FORBIDDEN.items() if name in have]
    if "README.md" not in have:
        problems.append(Problem("README.md", "missing", "python -m harness.submit writes it from measured results"))
    ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    models = [p for p in ggufs if not any(word in p.name for word in NOT_MODEL)]
    projectors = [p for p in ggufs if "mmproj" in p.name]
    if len(models) != 1:
        problems.append(Problem("*.gguf", f"{len(models)} model GGUFs ({', '.join(p.name for p in models) or 'none'})"
                                ": `llama-server -hf <repo>` serves one, picked by the quant tag ending its name",
                                "keep exactly one, e.g. model-Q4_K_M.gguf (python -m harness.submit copies the run's)"))
    if len(projectors) != 1:
        problems.append(Problem("mmproj-*.gguf", f"{len(projectors)} vision projectors: `-hf` loads the one beside "
                                "the model, and without it the model cannot see images", "keep exactly one"))
    if len(models) == 1:
        problems += _model_problems(models[0], expect_tag)
    if len(projectors) == 1:
        problems += _general_type(projectors[0], "mmproj")
    return problems + llama_config_problems(folder)


def _model_problems(path: Path, expect_tag: str | None) -> list[Problem]:
    """The model GGUF's name ends in the type it holds (and the variant's), and it carries its chat template."""
    fields = _fields(path, ("general.type", "general.file_type", "tokenizer.chat_template"))
    if isinstance(fields, Problem):
        return [fields]
    problems = _general_type(path, "model", fields)
    match = _TAG.search(path.name)
    tag = match.group(1).upper() if match else None
    held = _file_type(fields.get("general.file_type"))
    if tag is None or held != tag:
        problems.append(Problem(path.name, f"holds {held or 'an unknown type'}, but its name ends in "
                                f"{tag or 'no quant tag'}: `-hf <repo>:TAG` picks a model GGUF by that name",
                                f"name it model-{held}.gguf" if held else "rebuild it with python -m compress"))
    elif expect_tag is not None and tag != expect_tag.upper():
        problems.append(Problem(path.name, f"is {tag}, but the variant is {expect_tag}",
                                "copy the run's GGUF (python -m harness.submit does)"))
    if not fields.get("tokenizer.chat_template"):
        problems.append(Problem(path.name, "holds no tokenizer.chat_template: llama-server would prompt the model "
                                "with a template of its own", "rebuild it with python -m compress (it writes one)"))
    return problems


def _general_type(path: Path, wanted: str, fields: Mapping[str, Any] | None = None) -> list[Problem]:
    fields = fields if fields is not None else _fields(path, ("general.type",))
    if isinstance(fields, Problem):
        return [fields]
    if fields.get("general.type") != wanted:
        return [Problem(path.name, f"is a GGUF of general.type {fields.get('general.type')!r}, not {wanted!r}",
                        "rebuild the folder with python -m compress SRC OUT --scheme gguf_...")]
    return []


def _fields(path: Path, keys: tuple[str, ...]) -> dict[str, Any] | Problem:
    """Metadata values of a GGUF (None when absent), or the Problem of a file that does not read as one."""
    try:
        reader = gguf_module().GGUFReader(path)
    except LlamaCppMissing as err:
        return Problem(path.name, f"not read: {err}", "build llama.cpp with `bash scripts/install.sh`")
    except (ValueError, OSError, IndexError) as err:  # what gguf-py raises on a truncated or foreign file
        return Problem(path.name, f"does not read as a GGUF ({err})", "copy it again from the variant folder")
    return {key: (field.contents() if (field := reader.fields.get(key)) is not None else None) for key in keys}


def _file_type(value: Any) -> str | None:
    """general.file_type as the tag llama.cpp names files with (15 -> Q4_K_M)."""
    try:
        return gguf_module().LlamaFileType(value).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        return None


def llama_config_problems(folder: Path) -> list[Problem]:
    """llama_config.yaml: a mapping of llama-server long options this build knows, none the judges' command sets."""
    import yaml  # lazy: PyYAML comes with Hydra

    path = folder / CONFIG_NAME
    if not path.is_file():
        return [Problem(CONFIG_NAME, "missing", "write the llama-server options the model asks for, `{}` for none "
                        "(python -m harness.submit does)")]
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        return [Problem(CONFIG_NAME, f"is not valid YAML ({err})", "rewrite it as `option-name: value` lines")]
    if cfg is None or not isinstance(cfg, dict):
        return [Problem(CONFIG_NAME, "is not a mapping of option names to values", "write `{}` for no option")]
    try:
        why = check_llama_config(cfg, server_help() if cfg else "")
    except LlamaCppMissing as err:
        return [Problem(CONFIG_NAME, f"not checked: {err}", "build llama.cpp with `bash scripts/install.sh`")]
    return [Problem(CONFIG_NAME, why.replace("engine.llama_config.", ""), "fix that option")] if why else []


def check_gguf_folder(folder: Path | str, *, launch: bool = True, expect_tag: str | None = None,
                      startup_timeout_s: float = 120.0) -> CheckReport:
    """Every check; llama-server is launched only when the static checks pass.

    Args:
        folder: the submission folder.
        launch: also run `llama-server -hf <repo>` on it and ask one suite image question.
        expect_tag: the GGUF type the variant names (None: not compared).
        startup_timeout_s: how long llama-server may take to load.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return CheckReport((Problem(str(folder), "is not a folder", "pass the submission folder"),), 0)
    problems = gguf_problems(folder, expect_tag) + text_problems(folder)
    size = folder_size_bytes(folder)
    ran = ("static, for `llama-server -hf <repo>`: one model GGUF whose name ends in the type it holds and one "
           "mmproj beside it, the chat template inside the model GGUF, llama_config.yaml's options known to this "
           "llama-server and none the judges' command sets, no vllm_config.yaml or preset.ini, paths and secrets")
    if problems:
        return CheckReport(tuple(problems), size, validation=(ran, "not launched: the static checks found problems"))
    if not launch:
        return CheckReport((), size, validation=(ran, "not launched (--no-launch)"))
    problem, answer, served = _launch(folder)
    return CheckReport((problem,) if problem else (), size, answer, validation=(ran, served))


def _launch(folder: Path) -> tuple[Problem | None, str | None, str]:
    """Serves the folder the judges' way; (the problem found or None, the answer, a line saying what ran)."""
    import yaml

    where = f"launched on {detect_platform().describe()}"
    config = yaml.safe_load((folder / CONFIG_NAME).read_text(encoding="utf-8")) or {}
    try:
        got = ask_one_image_hf(folder, config)
    except LaunchError as err:
        return Problem("*.gguf", str(err), err.fix), None, f"{where}: `llama-server -hf <repo>`: failed"
    model = next(p.name for p in folder.glob("*.gguf") if not any(w in p.name for w in NOT_MODEL))
    mmproj = next(p.name for p in folder.glob("*.gguf") if "mmproj" in p.name)
    served = (f"{where}: `{got.command}` with this folder as the repository's snapshot in a private Hugging Face "
              f"cache (--offline keeps it off the network and changes nothing else), host and port on the command "
              f"line, the API key in LLAMA_API_KEY, no llama.cpp config.ini of this machine; llama-server chose "
              f"{got.model_file} and {got.mmproj_file or 'no vision projector'} itself")
    if (got.model_file, got.mmproj_file) != (model, mmproj):
        return (Problem("*.gguf", f"`-hf` loaded {got.model_file} and {got.mmproj_file}, not {model} and {mmproj}",
                        "name the files as llama.cpp's -hf expects (model-<TAG>.gguf, mmproj-model-F16.gguf)"),
                got.answer, served + ": the wrong files")
    if not got.answer.strip():
        return (Problem("*.gguf", "the served model answered an image request with empty text",
                        "check the chat template and the weights (serve it by hand and look)"), got.answer,
                served + ": answered with empty text")
    return None, got.answer, served + ": started and answered one suite image request"
