"""What the server decodes a request with, derived as vLLM 0.32 does, checked against vLLM's own code;
and what a checkpoint's generation config or chat template changes against its base model's."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from harness.config.ranges import GENERATION_KEYS
from harness.config.schema import TEMPLATES_DIR, compose
from harness.preflight import generation_changes, generation_notes
from harness.serve.generation import changes_from_base, chat_template, generation_config, server_defaults
from harness.serve.vllm import vllm_args

EXPLICIT = {"temperature": 1.0, "top_p": 0.95, "top_k": 64, "max_tokens": 64, "seed": 5}


def _checkpoint(tmp: Path, tiny: Path, name: str, **generation) -> Path:
    """A copy of the tiny model whose generation_config.json also sets ``generation`` (None deletes the file)."""
    folder = tmp / name
    shutil.copytree(tiny, folder)
    path = folder / "generation_config.json"
    if generation.pop("no_file", False):
        path.unlink()
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **generation}))
    return folder


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("generation")
    return {"base": tiny_model_dir,
            "max16": _checkpoint(tmp, tiny_model_dir, "max16", max_new_tokens=16, temperature=0.7, top_k=40)}


OVERRIDES = [{}, {"max_new_tokens": 4}, {"max_new_tokens": None, "top_p": 0.9, "min_p": 0.05}]


@pytest.mark.parametrize(("name", "override"), list(itertools.product(["base", "max16"], OVERRIDES)))
def test_effective_sampling_matches_vllms_own_code(folders, name, override) -> None:
    """ModelConfig.get_diff_sampling_param, get_max_tokens and to_sampling_params, run for real."""
    from vllm.config.model import ModelConfig
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    model_config = ModelConfig(model=str(folders[name]), override_generation_config=dict(override))
    vllm_defaults = model_config.get_diff_sampling_param()
    # chat_completion/serving.py __init__ (generation_config "auto"): the override's own max_new_tokens caps.
    override_max_tokens = model_config.override_generation_config.get("max_new_tokens")
    ours = server_defaults(folders[name], override, model_config.max_model_len)
    assert dict(ours.sampling) == vllm_defaults
    for sent, prompt_tokens in itertools.product([{}, EXPLICIT], [90, model_config.max_model_len - 10]):
        expected = get_max_tokens(model_config.max_model_len, sent.get("max_tokens"), prompt_tokens, vllm_defaults,
                                  override_max_tokens)
        assert ours.max_tokens(sent.get("max_tokens"), prompt_tokens)[0] == expected
        request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **sent)
        params = request.to_sampling_params(expected, vllm_defaults)
        effective = ours.effective(sent)
        for key, value in effective.items():
            assert getattr(params, key) == pytest.approx(value) if value is not None else getattr(params, key) is None


def test_what_set_the_limit_is_named(folders) -> None:
    file16 = server_defaults(folders["max16"], {}, 4096)
    assert file16.max_tokens(None, 90) == (16, "generation_config")  # the judges send no max_tokens
    assert file16.max_tokens(64, 90) == (64, "request")  # a file's max_new_tokens is only a default
    capped = server_defaults(folders["base"], {"max_new_tokens": 16}, 4096)
    assert capped.max_tokens(64, 90) == (16, "override_generation_config")  # an override caps every request
    assert server_defaults(folders["base"], {}, 4096).max_tokens(None, 90) == (4006, "max_model_len")
    assert server_defaults(folders["base"], {}, None).max_tokens(None, 90) == (None, None)  # context unknown
    assert server_defaults("google/gemma-4-E4B-it") is None  # not a local folder: unknown, not guessed


def test_generation_config_is_read_as_vllm_reads_it(folders, tmp_path, tiny_model_dir) -> None:
    from vllm.transformers_utils.config import try_get_generation_config

    no_file = _checkpoint(tmp_path, tiny_model_dir, "no_file", no_file=True)
    config = json.loads((no_file / "config.json").read_text())
    config["temperature"] = config["text_config"]["temperature"] = 0.3  # transformers 5 drops both
    (no_file / "config.json").write_text(json.dumps(config))
    for folder in (folders["base"], folders["max16"], no_file):
        theirs = try_get_generation_config(str(folder), trust_remote_code=False).to_diff_dict()
        assert generation_config(folder) == {k: v for k, v in theirs.items() if k in GENERATION_KEYS}
    assert generation_config(folders["max16"]) == {**generation_config(folders["base"]), "max_new_tokens": 16,
                                                   "temperature": 0.7, "top_k": 40}
    assert generation_config(no_file) == {}


def test_a_checkpoints_max_new_tokens_is_flagged_with_what_it_changes(folders) -> None:
    changes = changes_from_base(folders["max16"], folders["base"])
    by_key = {c.key: c for c in changes}
    assert set(by_key) == {"max_new_tokens", "temperature", "top_k"}
    assert "max_new_tokens 16 caps every answer the judges do not size" in str(by_key["max_new_tokens"])
    base_temperature = generation_config(folders["base"]).get("temperature", "unset")
    assert f"temperature 0.7 (base model: {base_temperature})" in str(by_key["temperature"])
    assert changes_from_base(folders["base"], folders["base"]) == []
    # The same checkpoint given as its own base changes nothing; a null override restores the base's behaviour.
    assert changes_from_base(folders["max16"], folders["max16"]) == []
    restored = changes_from_base(folders["max16"], folders["base"],
                                 {"override-generation-config": {"max_new_tokens": None}})
    assert "max_new_tokens" not in {c.key for c in restored}


def test_the_card_reads_the_changes_from_a_written_vllm_config(folders, tmp_path) -> None:
    """A submission folder: the checkpoint plus vllm_config.yaml, as harness.serve.vllm writes it."""
    import yaml

    run = compose(["+variant=bf16_max_new16", "serve.chat_template=brevity"])
    args = vllm_args(folders["base"], run.serve, served_model_name="model")
    (tmp_path / "vllm_config.yaml").write_text(yaml.safe_dump(args))
    read_back = yaml.safe_load((tmp_path / "vllm_config.yaml").read_text())
    changes = changes_from_base(folders["base"], folders["base"], read_back)
    assert [c.what for c in changes] == ["generation_config", "chat_template"]
    assert "caps every answer at 16 tokens, even requests that send max_tokens" in str(changes[0])
    assert "Answer in as few words as possible." in str(changes[1])


def test_brevity_template_is_the_tiny_template_plus_one_system_turn(tiny_model_dir) -> None:
    """Rendered by the tiny model's own tokenizer, as vLLM renders it."""
    from transformers import AutoTokenizer

    from harness.tiny.tokenizer import CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert chat_template(tiny_model_dir) == CHAT_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                             {"type": "text", "text": "What colour is the shape?"}]}]
    render = {name: tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)
              for name, template in (("base", CHAT_TEMPLATE),
                                     ("brevity", (TEMPLATES_DIR / "brevity.jinja").read_text()))}
    bos = tokenizer.bos_token
    turn = "<|turn>system\nAnswer in as few words as possible.<turn|>\n"
    assert render["brevity"] == bos + turn + render["base"].removeprefix(bos)
    system = [{"role": "system", "content": "Be terse."}, *messages]  # a caller's own system turn is not doubled
    assert tokenizer.apply_chat_template(system, chat_template=(TEMPLATES_DIR / "brevity.jinja").read_text(),
                                         tokenize=False).count("<|turn>system") == 1


def test_preflight_notes_name_each_change_and_what_messages_mode_fills_in() -> None:
    run = compose(["+variant=bf16_brevity"])
    [template] = generation_changes(run, run.serve)
    assert template.what == "chat_template" and "brevity.jinja" in str(template)
    assert generation_changes(compose(["+variant=bf16"]), compose(["+variant=bf16"]).serve) == []
    run = compose(["+variant=bf16_max_new16", "sampling.send=messages"])
    notes = generation_notes(run, run.serve)
    assert any("max_new_tokens 16 caps every answer at 16 tokens" in n for n in notes)
    assert any(n.startswith("sampling.send=messages") and "max_tokens 16" in n and "no seed" in n for n in notes)
    assert generation_notes(compose([]), compose([]).serve) == []  # explicit requests, the base's own files


def test_a_submission_folders_relative_template_is_read_from_the_folder(folders, tmp_path) -> None:
    """vllm_config.yaml with `model: .` and `chat-template: brevity.jinja`, served from inside the folder."""
    folder = tmp_path / "submission"
    shutil.copytree(folders["base"], folder)
    shutil.copy(TEMPLATES_DIR / "brevity.jinja", folder / "brevity.jinja")
    [change] = changes_from_base(folder, folders["base"], {"model": ".", "chat-template": "brevity.jinja"})
    assert str(change).startswith("--chat-template brevity.jinja differs from the base model's chat template")
    inline = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    [change] = changes_from_base(folder, folders["base"], {"chat-template": inline})
    assert str(change).startswith("--chat-template (inline) differs")
