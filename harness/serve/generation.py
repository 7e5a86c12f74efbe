"""What vLLM 0.32 decodes a chat request with when the request leaves sampling out, and what a
checkpoint's generation_config.json or chat template changes against its base model's.

Read from vLLM 0.32's own code (vllm/config/model.py ModelConfig.get_diff_sampling_param,
vllm/entrypoints/openai/chat_completion/serving.py create_chat_completion,
vllm/entrypoints/serve/utils/api_utils.py get_max_tokens,
vllm/entrypoints/openai/chat_completion/protocol.py ChatCompletionRequest.to_sampling_params).
vLLM echoes none of these values in its response, so the harness derives them the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.ranges import GENERATION_KEYS as SAMPLING_KEYS  # get_diff_sampling_param's available_params

# ChatCompletionRequest._DEFAULT_SAMPLING_PARAMS: what a field is when neither the request nor
# the generation config sets it ("Priority: user -> server default -> OpenAI default").
VLLM_DEFAULTS = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "temperature": 1.0,
                 "top_p": 1.0, "top_k": 0, "min_p": 0.0}
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ServerDefaults:
    """What a vLLM 0.32 server (``--generation-config auto``) fills into a chat request.

    ``sampling``: get_diff_sampling_param(): the checkpoint's generation_config sampling keys
    with --override-generation-config merged on top (``max_new_tokens`` renamed ``max_tokens``);
    ``cap_max_tokens``: the override's own ``max_new_tokens`` (serving.py ``override_max_tokens``),
    which caps every request, even one that sends a larger max_tokens; ``max_model_len``: the
    context length the server reports in /v1/models (None until it answered).
    """

    sampling: Mapping[str, Any] = field(default_factory=dict)
    cap_max_tokens: int | None = None
    max_model_len: int | None = None

    def effective(self, sent: Mapping[str, Any]) -> dict[str, Any]:
        """The sampling a request carrying ``sent`` is decoded with, its seed included: the values
        to_sampling_params hands to SamplingParams (which itself makes temperature 0 greedy)."""
        values = {name: sent[name] if sent.get(name) is not None else self.sampling.get(name, default)
                  for name, default in VLLM_DEFAULTS.items()}
        return {**values, "seed": sent.get("seed")}

    def max_tokens(self, sent: int | None, prompt_tokens: int) -> tuple[int | None, str | None]:
        """(effective max_tokens, what set it) for a request of ``prompt_tokens`` that sent ``sent``.

        get_max_tokens(): the smallest of max_model_len - prompt, the request's max_tokens (else
        the generation config's max_new_tokens) and the override's cap; the platform's own limit
        is sys.maxsize on CPU and CUDA. (None, None) when the prompt length or context is unknown.
        """
        if not prompt_tokens or self.max_model_len is None:
            return None, None
        fallback = (sent, "request") if sent is not None else (self.sampling.get("max_tokens"), "generation_config")
        candidates = [(self.max_model_len - prompt_tokens, "max_model_len"),
                      (self.cap_max_tokens, "override_generation_config"), fallback]  # ties: the first one named
        return min(((v, why) for v, why in candidates if v is not None), key=lambda c: c[0])


def generation_config(folder: str | Path) -> dict[str, Any]:
    """The sampling keys of a checkpoint's generation config, as vLLM 0.32 reads them (non-null only).

    try_get_generation_config(): generation_config.json; transformers 5.16-5.19 default every
    sampling field to None, so to_diff_dict() keeps exactly the keys the file sets. Without the
    file vLLM builds one from config.json, but transformers 5 configs keep no sampling keys, so
    that gives none (tests/test_generation.py checks both against vLLM).
    """
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {key: data[key] for key in SAMPLING_KEYS if data.get(key) is not None}


def server_defaults(folder: str | Path, override: Mapping[str, Any] | None = None,
                    max_model_len: int | None = None) -> ServerDefaults | None:
    """The ServerDefaults of a server on checkpoint ``folder`` launched with ``override``
    (--override-generation-config); None when the folder is not local (a hub id)."""
    if not Path(folder).is_dir():
        return None
    override = dict(override or {})
    merged = {**generation_config(folder), **override}  # a null in the override removes the file's key
    sampling = {("max_tokens" if k == "max_new_tokens" else k): v for k, v in merged.items()
                if k in SAMPLING_KEYS and v is not None}
    return ServerDefaults(sampling, override.get("max_new_tokens"), max_model_len)


@dataclass(frozen=True)
class Change:
    """One way the served checkpoint's generation config or chat template differs from its base model's.

    ``what``: "generation_config" or "chat_template"; ``key``: the generation config key (None
    for the template); ``effect``: what it changes for the judges, in words.
    """

    what: str
    key: str | None
    base: Any
    served: Any
    effect: str

    def __str__(self) -> str:
        return self.effect


def changes_from_base(served_dir: str | Path, base_dir: str | Path,
                      vllm_args: Mapping[str, Any] | None = None) -> list[Change]:
    """How the generation config and chat template a server uses differ from the base model's.

    Args:
        served_dir: the checkpoint folder served (a build, or a submission folder).
        base_dir: the model the variant was compressed from.
        vllm_args: the server's vllm_config.yaml keys (harness.serve.vllm.vllm_args, or the file
            read back): ``override-generation-config`` and ``chat-template`` count as the served
            side; ``generation-config: vllm`` drops the checkpoint's file as vLLM does.
    """
    args = vllm_args or {}
    override = dict(args.get("override-generation-config") or {})
    source = args.get("generation-config", "auto")
    served_file = {} if source == "vllm" else generation_config(
        served_dir if source == "auto" else Path(served_dir) / source)  # relative: to the folder served, as `model: .`
    served = {k: v for k, v in {**served_file, **override}.items() if v is not None}
    base = generation_config(base_dir)
    # serving.py: a max_new_tokens from the override, or from any --generation-config folder, caps every request.
    folder = source not in ("auto", "vllm")
    changes = [_gen_change(key, base.get(key), served.get(key),
                           "--override-generation-config" if key in override else
                           f"--generation-config {source}" if folder else "generation_config.json",
                           caps=key in override or folder)
               for key in SAMPLING_KEYS if base.get(key) != served.get(key)]
    base_template = chat_template(base_dir)
    served_template = chat_template(served_dir, args.get("chat-template"))
    if base_template != served_template:
        changes.append(Change("chat_template", None, base_template, served_template, _template_effect(
            base_template, served_template, args.get("chat-template"))))
    return changes


def _gen_change(key: str, base: Any, served: Any, where: str, caps: bool) -> Change:
    if key == "max_new_tokens" and served is not None:
        effect = (f"{where} max_new_tokens {served} caps every answer at {served} tokens, even requests that send "
                  "max_tokens (vLLM applies it as a server-wide limit)" if caps else
                  f"{where} max_new_tokens {served} caps every answer the judges do not size (requests without "
                  "max_tokens)")
        effect += f" (base model: {base if base is not None else 'unset'})"
    elif served is None:
        default = "no limit but the context" if key == "max_new_tokens" else f"vLLM's {VLLM_DEFAULTS[key]}"
        effect = f"{where} drops the base model's {key} {base}: requests that leave it out get {default}"
    else:
        effect = (f"{where} {key} {served} (base model: {base if base is not None else 'unset'}) is used by every "
                  f"request that does not send {key}")
    return Change("generation_config", key, base, served, effect)


def chat_template(folder: str | Path, given: str | None = None) -> str | None:
    """The chat template vLLM renders prompts with: ``given`` (--chat-template: a file, relative
    paths read from ``folder`` as a server started there with `model: .` would, or the template
    itself), else the folder's chat_template.jinja, chat_template.json or tokenizer_config.json."""
    folder = Path(folder)
    if given:
        path = folder / given  # an absolute ``given`` stays itself
        return path.read_text(encoding="utf-8") if path.is_file() else given
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".jinja"):
            return path.read_text(encoding="utf-8")
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if template:
            return template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return None


def _template_effect(base: str | None, served: str | None, given: str | None) -> str:
    # A file's text differs from its path; a template given inline is the text served.
    where = ("the checkpoint's template" if not given else
             f"--chat-template {Path(given).name}" if given != served else "--chat-template (inline)")
    if served is None:
        return f"{where}: the served checkpoint has no chat template (the base model has one)"
    text = _inserted_text(base or "", served)
    text = text if len(text) <= 160 else text[:157] + "..."
    return (f"{where} differs from the base model's chat template: every prompt the judges send is rendered "
            f"through it ({f'it adds: {text}' if text else 'text removed or reordered'})")


def _inserted_text(base: str, served: str) -> str:
    """The text ``served`` inserts into ``base``: compared tag by tag, control tags dropped, quoted
    output shown as its text, whitespace folded."""
    import difflib
    import re

    def units(template: str) -> list[str]:
        return [u for u in re.split(r"({%.*?%}|{{.*?}})", template, flags=re.S) if u]

    ours, theirs = units(base), units(served)
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    added = [u for op, _, _, j1, j2 in matcher.get_opcodes() if op in ("insert", "replace") for u in theirs[j1:j2]]
    shown = []
    for unit in added:
        if unit.startswith("{%"):
            continue
        literal = re.fullmatch(r"{{\s*'(.*)'\s*}}", unit, flags=re.S)
        shown.append(literal.group(1) if literal else unit)
    return " ".join(" ".join(shown).split())


def describe_defaults(defaults: ServerDefaults) -> str:
    """What a request that sends no sampling gets from this server, in one line."""
    fields = [f"{name} {defaults.sampling[name]} (generation config)" if name in defaults.sampling
              else f"{name} {default} (vLLM default)" for name, default in VLLM_DEFAULTS.items()]
    limit = defaults.sampling.get("max_tokens")
    size = (f"max_tokens {limit} (generation config max_new_tokens)" if limit is not None
            else "max_tokens = the context left after the prompt (no max_new_tokens anywhere)")
    if defaults.cap_max_tokens is not None:
        size += f", capped at {defaults.cap_max_tokens} for every request (--override-generation-config)"
    return f"{size}; " + ", ".join(fields) + "; no seed"
