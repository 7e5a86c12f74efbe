"""What a running llama-server really uses, read back from it: its /props route and its loader's log.

llama-server prints most of its loader settings (batch sizes, flash attention, GPU layers) only at
--verbosity 4, which also logs every request at length; the measured server runs at the default,
and ``probe_log`` launches the same command once beforehand, briefly, to print them.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.serve.generation import ServerDefaults, chat_template
from harness.serve.llama_cpp_home import build_info
from harness.serve.vllm import stop_process_group

# llama-server's sampling defaults under the names vLLM's (and so ServerDefaults') use.
_SAMPLING_NAMES = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repeat_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
                   "frequency_penalty": "frequency_penalty"}

# Settings llama.cpp prints while loading, by the pattern of their line (the first match wins).
# threads, slots and kv_unified print at the default verbosity too; the rest only in the probe's log.
_LOG_SETTINGS = {
    "threads": r"(?:system_info|threadpool init), n_threads = (\d+)",
    "threads_batch": r"n_threads_batch = (\d+)",
    "batch": r"llama_context:\s+n_batch\s+=\s+(\d+)",
    "ubatch": r"llama_context:\s+n_ubatch\s+=\s+(\d+)",
    "n_seq_max": r"llama_context:\s+n_seq_max\s+=\s+(\d+)",
    "flash_attn_setting": r"llama_context:\s+flash_attn\s+=\s+(\w+)",
    "flash_attn": r"Flash Attention (enabled|disabled)",  # "auto" resolved for the text model
    "gpu_layers": r"offloaded (\d+/\d+) layers to GPU",  # absent from a build without a GPU backend
    "slots": r"initializing, n_slots = (\d+)",
    "kv_unified": r"kv_unified = '?(true|false)",
    "kv_cache_type": r"llama_kv_cache: size = .* K \((\w+)\)",
    "prompt_cache_mib": r"prompt cache is enabled, size limit: (\d+) MiB",
}


def log_settings(*texts: str) -> dict[str, Any]:
    """The settings of ``_LOG_SETTINGS`` found in llama-server logs (earlier texts win), numbers as ints."""
    found: dict[str, Any] = {}
    for text in texts:
        for name, pattern in _LOG_SETTINGS.items():
            if name not in found and (match := re.search(pattern, text)):
                found[name] = int(match.group(1)) if match.group(1).isdigit() else match.group(1)
    return found


def effective_settings(props: Mapping[str, Any], log_text: str, probe_text: str = "") -> dict[str, Any]:
    """What the running server uses: its /props answer, then what its own log and the probe's printed.

    ``n_ctx``: the context of each slot; ``total_slots``: requests decoded at once; ``sampling``:
    what a request gets for each field it does not send (llama-server's min_p 0.05 included);
    ``gpu_layers``: "offloaded/offloadable", None on a build without a GPU backend (all on the CPU).
    """
    general = props.get("default_generation_settings") or {}
    params = general.get("params") or {}
    loaded = log_settings(log_text, probe_text)
    return {
        "name": "llama_cpp",
        "build": props.get("build_info"),
        "build_json": build_info(),
        "model_path": props.get("model_path"),
        "model_ftype": props.get("model_ftype"),
        "n_ctx": general.get("n_ctx"),
        "total_slots": props.get("total_slots"),
        "modalities": props.get("modalities"),
        "chat_template": props.get("chat_template"),
        "sampling": {ours: _tidy(params[theirs]) for theirs, ours in _SAMPLING_NAMES.items() if theirs in params},
        "n_predict": params.get("n_predict"),
        **{name: loaded.get(name) for name in _LOG_SETTINGS},
    }


def _tidy(value: Any) -> Any:
    """A float32 setting as its decimal (0.949999988 -> 0.95)."""
    return round(value, 6) if isinstance(value, float) else value


def probe_log(command: list[str], env: Mapping[str, str], log_path: Path, timeout_s: float) -> str:
    """The loader's log of a short launch of ``command`` (with --verbosity 4 added), stopped once loaded.

    Same binary, files and options as the measured server, run before it (never beside it) on
    another free port behind a throwaway key; what it printed is kept in ``log_path``.
    """
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*command, "--verbosity", "4"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if b"model loaded" in log_path.read_bytes():
                break
            time.sleep(0.05)
    finally:
        stop_process_group(proc)
    return log_path.read_text(errors="replace")


def server_defaults(effective: Mapping[str, Any]) -> ServerDefaults:
    """What this server fills into a request that leaves sampling out, in ServerDefaults' terms.

    llama-server's n_predict -1 means no limit but the context, which is what ServerDefaults
    says when it has no max_tokens.
    """
    sampling = dict(effective.get("sampling") or {})
    n_predict = effective.get("n_predict")
    if isinstance(n_predict, int) and n_predict > 0:
        sampling["max_tokens"] = n_predict
    return ServerDefaults(sampling, None, effective.get("n_ctx"))


def template_changes(base_dir: str | Path, effective: Mapping[str, Any]) -> list[str]:
    """How the chat template llama-server renders with (read back from /props) differs from the base
    model's, in words; [] when they are the same or either is unknown (a base model that is no local folder)."""
    if not Path(base_dir).is_dir() or not effective.get("chat_template"):
        return []
    base = chat_template(base_dir)
    served = effective["chat_template"]
    if base is None or base.strip() == served.strip():
        return []
    return ["chat template: llama-server renders prompts with a template other than the base model's "
            "(the GGUF's tokenizer.chat_template); answers and their length may differ from vLLM's"]
