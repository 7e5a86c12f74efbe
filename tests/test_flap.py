"""FLAP math: statistics, scores, widths, channel choice, bias compensation, layer roles, config checks."""

from __future__ import annotations

import json

import pytest
import torch

from compress import flap
from compress.configs import StepsConfig, config_from_name

torch.set_num_threads(1)


def _activations(tokens: int = 300, channels: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(channels, generator=g, dtype=torch.float64) * 3
    offset = torch.randn(channels, generator=g, dtype=torch.float64)
    return torch.randn(tokens, channels, generator=g, dtype=torch.float64) * scale + offset


def test_running_stats_over_batches_equal_the_whole_sample_statistics():
    x = _activations()
    stats = flap.RunningStats(x.shape[1])
    for chunk in (x[:1], x[1:70], x[70:71], x[71:].reshape(1, -1, x.shape[1])):  # uneven batches, a 3-D one
        stats.update(chunk)
    assert stats.count == len(x)
    torch.testing.assert_close(stats.mean, x.mean(dim=0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.variance(), x.var(dim=0), rtol=1e-12, atol=1e-12)


def test_flap_scores_are_variance_times_squared_column_norm():
    x, w = _activations(), torch.randn(16, 48, dtype=torch.float64)
    expected = torch.tensor([x[:, j].var().item() * sum(w[i, j].item() ** 2 for i in range(16)) for j in range(48)],
                            dtype=torch.float64)
    torch.testing.assert_close(flap.flap_scores(x.var(dim=0), w), expected)
    torch.testing.assert_close(flap.magnitude_scores(w), torch.linalg.vector_norm(w, dim=0))


def test_bias_reproduces_dense_output_when_pruned_inputs_are_constant():
    x, w = _activations(), torch.randn(16, 48, dtype=torch.float64)
    kept = flap.kept_channels(torch.rand(48, dtype=torch.float64), 32)
    pruned = flap.pruned_channels(48, kept)
    x[:, pruned] = torch.randn(len(pruned), dtype=torch.float64)  # the same value at every token
    stats = flap.RunningStats(48)
    stats.update(x)
    bias = flap.compensation_bias(w, stats.mean, pruned)
    dense = x @ w.T
    torch.testing.assert_close(x[:, kept] @ w[:, kept].T + bias, dense, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(x[:, kept] @ w[:, kept].T, dense, atol=1e-3)  # without it the output moves


def test_kept_channels_are_the_highest_scoring_in_ascending_order():
    scores = torch.tensor([0.5, 3.0, -1.0, 2.0, 0.0, 9.0])
    assert flap.kept_channels(scores, 3).tolist() == [1, 3, 5]
    assert flap.pruned_channels(6, torch.tensor([1, 3, 5])).tolist() == [0, 2, 4]


@pytest.mark.parametrize(("width", "share", "multiple", "kept"), [
    (10240, 0.2, 128, 8192), (256, 0.25, 32, 192), (256, 0.2, 32, 192), (256, 0.5, 32, 128),
    (256, 0.0, 32, 256), (250, 0.0, 32, 250), (256, 0.99, 32, 32), (256, 0.2, 128, 256),
])
def test_schedule_width_is_rounded_to_the_multiple(width, share, multiple, kept):
    assert flap.kept_width(width, share, multiple) == kept


def test_schedule_widths_follow_shares_and_spare_protected_layers():
    widths = flap.schedule_widths([256] * 4, [0.0, 0.25, 0.5, 0.5], 32, protected=frozenset({3}))
    assert widths == [256, 192, 128, 256]
    with pytest.raises(ValueError, match="4 layers"):
        flap.schedule_widths([256] * 4, [0.1] * 3, 32)


def test_global_widths_hit_the_ratio_within_rounding_and_respect_floor_and_protection():
    g = torch.Generator().manual_seed(1)
    scores = [flap.standardize(torch.rand(512, generator=g, dtype=torch.float64) * (i + 1)) for i in range(6)]
    scores[2] = scores[2] - 5.0  # one layer is clearly the least important
    widths = flap.global_widths(scores, 0.25, 32, 0.5, protected=frozenset({4}))
    removed = [512 - w for w in widths]
    assert all(w % 32 == 0 for w in widths)
    assert removed[4] == 0 and max(removed) <= 256
    assert removed[2] == 256  # the low layer went down to its floor
    assert abs(sum(removed) - 0.25 * 6 * 512) <= 16 * 5  # within half a multiple per pruned layer


def test_global_ratio_zero_keeps_everything():
    scores = [flap.standardize(torch.rand(64, dtype=torch.float64)) for _ in range(3)]
    assert flap.global_widths(scores, 0.0, 32, 0.5) == [64, 64, 64]


def test_layer_roles_of_the_tiny_model_and_an_e4b_like_model(tiny_model_dir):
    text = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]
    roles = flap.layer_roles(text)  # [sliding, sliding, full, full], last layer KV-shared
    assert [r.kv_shared for r in roles] == [False, False, False, True]
    assert [r.index for r in roles if r.kv_source] == [2]  # the shared layer is full attention: it reads layer 2
    e4b = {"layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(42)],
           "num_kv_shared_layers": 18}
    roles = flap.layer_roles(e4b)
    assert [r.index for r in roles if r.kv_source] == [22, 23]
    assert [r.index for r in roles if r.has("full_attention")] == [5, 11, 17, 23, 29, 35, 41]


def test_config_refuses_inconsistent_settings_before_any_work():
    with pytest.raises(ValueError, match="bias_compensation false"):
        config_from_name("flap", method="magnitude")
    with pytest.raises(ValueError, match="needs a schedule"):
        config_from_name("flap", mode="schedule")
    with pytest.raises(ValueError, match="lists 3 shares"):
        config_from_name("flap", mode="schedule", schedule={4: [0.1, 0.1, 0.1]})
    with pytest.raises(ValueError, match="protect_roles"):
        config_from_name("flap", protect_roles=["attention"])
    with pytest.raises(ValueError, match="not for this model's 42"):
        config_from_name("flap", mode="schedule", schedule={4: [0, 0, 0.25, 0]}).shares_for(42)


def test_steps_config_builds_each_step_and_refuses_pruning_after_quantization():
    steps = config_from_name("steps", steps=[{"scheme": "flap", "multiple": 32},
                                             {"scheme": "fp8_dynamic", "include_qkv": False}])
    assert isinstance(steps, StepsConfig) and [s.SCHEME for s in steps.steps] == ["flap", "fp8_dynamic"]
    assert steps.steps[1].include_qkv is False
    with pytest.raises(ValueError, match="prune first"):
        config_from_name("steps", steps=[{"scheme": "fp8_dynamic"}, {"scheme": "flap"}])
    with pytest.raises(ValueError, match="no scheme"):
        config_from_name("steps", steps=[{"ratio": 0.2}])
