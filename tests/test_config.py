"""Every YAML in conf/ composes into a RunConfig; mistakes fail with the options listed."""

from __future__ import annotations

import pytest

from harness.config.schema import ConfigError, RunConfig, compose, group_options, to_compress_config, to_run_config

GROUPS = ("model", "compress", "serve", "workload", "sampling", "energy", "quality")


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    run = compose([f"{group}={option}"])
    assert isinstance(run, RunConfig)
    if group == "compress":
        # An option is named after its scheme, or is a sequence of steps (prune -> ... -> quantize).
        assert run.compress.scheme in (option, "steps")
        assert run.compress.scheme == option or len(to_compress_config(run.compress).steps) >= 2


@pytest.mark.parametrize("variant", group_options("variant"))
def test_every_variant_composes_and_names_itself(variant: str) -> None:
    from harness.tiny import trained_budgets

    run = compose([f"+variant={variant}", "model=gemma4_e4b"])
    assert run.name == variant
    if run.serve.max_soft_tokens in (None, *trained_budgets()):
        assert compose([f"+variant={variant}"]).name == variant  # and on the embedded tiny model
    else:
        with pytest.raises(ConfigError, match="tiny model was trained at"):
            compose([f"+variant={variant}"])


def test_variants_cover_the_brief() -> None:
    wanted = {"bf16", "fp8", "fp8_dynamic", "w4a16_rtn", "w4a16_gptq", "w8a8_int8"}
    assert wanted <= set(group_options("variant"))


def test_fp8_variant_applies_compress_and_serve_deltas() -> None:
    run = compose(["+variant=fp8"])
    assert run.compress.scheme == "fp8"
    assert run.serve.kv_cache_dtype == "fp8"
    assert run.serve.max_model_len == 4096
    assert run.serve.max_num_seqs == 32
    assert run.serve.enable_chunked_prefill is True and run.serve.enable_prefix_caching is True


def test_serve_only_variant_keeps_base_weights() -> None:
    base, seqs4 = compose(["+variant=bf16"]), compose(["+variant=bf16_seqs4"])
    assert seqs4.compress == base.compress
    assert seqs4.serve.max_num_seqs == 4 != base.serve.max_num_seqs


def test_int4_variant_keeps_the_budget_and_seed_003s_recipe_raises_it() -> None:
    assert compose(["+variant=w4a16_rtn"]).serve.max_soft_tokens is None
    assert compose(["+variant=w4a16_rtn_b560", "model=gemma4_e4b"]).serve.max_soft_tokens == 560


def test_tiny_model_refuses_a_budget_it_was_not_trained_at() -> None:
    from harness.tiny import trained_budgets

    untrained = next(b for b in (70, 140, 280, 560, 1120) if b not in trained_budgets())
    with pytest.raises(ConfigError, match=f"max_soft_tokens={untrained}: the embedded tiny model was trained at"):
        compose([f"serve.max_soft_tokens={untrained}"])
    compose([f"serve.max_soft_tokens={untrained}", "model=gemma4_e4b"])  # a real model takes every budget


def test_competition_sampling_matches_judges() -> None:
    s = compose([]).sampling
    assert (s.temperature, s.top_p, s.top_k) == (1.0, 0.95, 64)


def test_tiny_model_path_defaults_to_committed_dir() -> None:
    from harness.tiny import DEFAULT_MODEL_DIR

    run = compose([])
    assert run.model.path is None and run.model.resolved_path() == str(DEFAULT_MODEL_DIR)
    assert compose(["model=gemma4_e4b"]).model.resolved_path() == "google/gemma-4-E4B-it"


def test_run_config_is_frozen() -> None:
    run = compose([])
    with pytest.raises(AttributeError):
        run.serve.port = 1  # type: ignore[misc]


def test_unknown_variant_lists_the_variants() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["+variant=fp7"])
    for name in group_options("variant"):
        assert name in str(err.value)


def test_unknown_group_option_lists_the_options() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["compress=int3"])
    assert "w8a8_int8" in str(err.value) and "fp8_dynamic" in str(err.value)


def test_added_unknown_key_names_the_accepted_keys() -> None:
    with pytest.raises(ConfigError, match="serve.max_num_seq.*max_num_seqs"):
        compose(["+serve.max_num_seq=4"])


def test_bad_literal_lists_choices() -> None:
    with pytest.raises(ConfigError, match="workload.mode='burst'.*poisson"):
        compose(["workload.mode=burst"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="workload.concurrency must be int"):
        compose(["workload.concurrency=four"])


def test_bad_soft_token_budget_lists_budgets() -> None:
    with pytest.raises(ConfigError, match="560"):
        compose(["serve.max_soft_tokens=500"])


def test_unknown_fallback_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="serve.allow_fallback"):
        compose(["serve.allow_fallback=[max_model_len]"])


def test_plain_mapping_converts_like_a_dictconfig() -> None:
    from omegaconf import OmegaConf

    run = compose(["+variant=fp8"])
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.config.schema import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["+variant=fp8"])
    assert to_run_config(OmegaConf.to_container(cfg)) == run == to_run_config(cfg)


def test_override_of_missing_key_lists_the_group_keys() -> None:
    with pytest.raises(ConfigError, match="(?s)max_num_seq.*accepts:.*max_num_seqs"):
        compose(["serve.max_num_seq=4"])


@pytest.mark.parametrize("scheme", [s for s in group_options("compress") if s != "none"])
def test_compress_options_build_the_compress_configs(scheme: str) -> None:
    from compress.configs import CONFIGS, StepsConfig

    config = to_compress_config(compose([f"compress={scheme}"]).compress)
    assert type(config) is CONFIGS.get(scheme, StepsConfig)  # an option with a steps list is a sequence


def test_compress_params_reach_the_compress_config() -> None:
    config = to_compress_config(compose(["compress=w4a16_gptq", "compress.group_size=64"]).compress)
    assert config.group_size == 64


def test_unknown_compress_param_names_the_fields() -> None:
    with pytest.raises(ConfigError, match="(?s)groupsize.*group_size"):
        compose(["compress=w4a16_rtn", "+compress.groupsize=64"])


def test_compose_works_inside_a_running_hydra_app() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.config.schema import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert compose(["+variant=fp8"]).name == "fp8"
        assert GlobalHydra.instance().is_initialized()
        assert hydra_compose(config_name="config", overrides=["+variant=w8a8_int8"]).name == "w8a8_int8"


def test_a_baseline_shares_the_setup_but_not_the_variant_identity_or_compression() -> None:
    from harness.score.baseline import baseline_overrides

    given = ["+variant=flap_global", "name=flap_bias", "compress.ratio=0.7", "compress=flap", "~compress.seed",
             "workload.limit=200", "sampling=greedy", "model.path=/m", "serve.max_num_seqs=4"]
    assert baseline_overrides(given) == ["workload.limit=200", "sampling=greedy", "model.path=/m",
                                         "serve.max_num_seqs=4"]
    base = compose(["+variant=bf16", *baseline_overrides(given)])
    assert base.name == "bf16" and base.compress.is_none and base.workload.limit == 200


def test_requests_send_every_sampling_field_unless_told_to_send_messages_only() -> None:
    assert compose([]).sampling.send == "explicit" == compose(["sampling=greedy"]).sampling.send
    assert compose(["sampling.send=messages"]).sampling.send == "messages"
    # Messages-only requests send no max_tokens: only the prompt must fit the context (64 + 1 here, not 64 + 64).
    compose(["sampling.send=messages", "serve.max_model_len=100"])


def test_length_lever_variants_set_their_serve_options() -> None:
    from harness.config.schema import TEMPLATES_DIR

    brevity, capped, base = (compose([f"+variant={v}"]) for v in ("bf16_brevity", "bf16_max_new16", "bf16"))
    assert brevity.serve.chat_template == str(TEMPLATES_DIR / "brevity.jinja")
    assert dict(capped.serve.generation_config) == {"max_new_tokens": 16}
    assert brevity.compress == capped.compress == base.compress  # serve-only deltas, gated against bf16
    assert base.serve.chat_template is None and dict(base.serve.generation_config) == {}


def test_chat_template_paths_are_read_from_where_the_command_runs(tmp_path, monkeypatch) -> None:
    (tmp_path / "short.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    monkeypatch.chdir(tmp_path)
    assert compose(["serve.chat_template=short.jinja"]).serve.chat_template == str(tmp_path / "short.jinja")
    with pytest.raises(ConfigError, match=f"(?s)serve.chat_template=nope.jinja: no such file.*{tmp_path}.*brevity"):
        compose(["serve.chat_template=nope.jinja"])


def test_generation_config_takes_only_what_vllm_turns_into_request_defaults() -> None:
    assert dict(compose(["+serve.generation_config.top_p=0.9"]).serve.generation_config) == {"top_p": 0.9}
    with pytest.raises(ConfigError, match="serve.generation_config.max_length: vLLM turns only .*max_new_tokens"):
        compose(["+serve.generation_config.max_length=16"])
    with pytest.raises(ConfigError, match="max_new_tokens=0 must be a positive integer"):
        compose(["+serve.generation_config.max_new_tokens=0"])
    with pytest.raises(ConfigError, match="ignore_eos=true needs sampling.send=explicit"):
        compose(["sampling.send=messages", "sampling.ignore_eos=true"])


SERVING_KEYS = ("max_model_len", "max_num_seqs", "enable_chunked_prefill", "enable_prefix_caching",
                "gpu_memory_utilization")


@pytest.mark.parametrize("model", ["gemma4_e4b", "gemma3_4b"])
@pytest.mark.parametrize("variant", group_options("variant"))
def test_a_real_models_variants_are_served_like_their_baseline(model: str, variant: str) -> None:
    """Context length and batch are the model's for the baseline and every variant, unless the variant
    sets them itself; the baseline is composed as harness.__main__.baseline_config composes it."""
    import yaml

    from harness.config.schema import CONF_DIR
    from harness.score.baseline import baseline_overrides

    argv = [f"+variant={variant}", f"model={model}"]
    run = compose(argv)
    baseline = compose(["+variant=bf16", *baseline_overrides(argv)])
    own = (yaml.safe_load((CONF_DIR / "variant" / f"{variant}.yaml").read_text()).get("serve") or {})
    for key in SERVING_KEYS:
        if key not in own:
            assert getattr(run.serve, key) == getattr(baseline.serve, key), key
    assert (baseline.serve.max_model_len, baseline.serve.max_num_seqs) == (4096, 32)  # not vLLM's 128K and 256


def test_a_command_line_serve_setting_reaches_both_sides() -> None:
    from harness.score.baseline import baseline_overrides

    argv = ["+variant=fp8", "model=gemma4_e4b", "serve.max_model_len=8192"]
    baseline = compose(["+variant=bf16", *baseline_overrides(argv)])
    assert compose(argv).serve.max_model_len == baseline.serve.max_model_len == 8192
    assert compose(["model=gemma4_e4b", "+variant=bf16_seqs4"]).serve.max_num_seqs == 4  # the variant's own wins
