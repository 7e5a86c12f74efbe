"""At equal widths on the tiny model, FLAP-chosen channels move the output distribution less than
magnitude-chosen ones."""

from __future__ import annotations

import pytest
import torch

from compress import compress_checkpoint, config_from_name
from harness.build.calibration import suite_source

torch.set_num_threads(1)
SHARE = 0.5  # every layer loses half its channels: small enough to keep answers, large enough to separate methods
METHODS = {"flap+bias": {"method": "flap"}, "flap": {"method": "flap", "bias_compensation": False},
           "magnitude": {"method": "magnitude", "bias_compensation": False}}


@pytest.fixture(scope="module")
def kl_by_method(tiny_model_dir, tmp_path_factory) -> dict[str, float]:
    """Mean next-token KL(dense || pruned), nats per text position, over 40 test items."""
    from harness.replay.workloads.base import load_samples
    from harness.score.offline import kl_per_position, load_model, next_token_log_probs

    samples = load_samples(0, "test", 40)
    dense = next_token_log_probs(*load_model(tiny_model_dir), samples)
    root = tmp_path_factory.mktemp("flap-quality")
    out = {}
    for name, fields in METHODS.items():
        config = config_from_name("flap", mode="schedule", schedule={4: [SHARE] * 4}, multiple=32,
                                  protect_roles=[], **fields)
        folder = compress_checkpoint(tiny_model_dir, root / name, config, suite_source())
        pruned = next_token_log_probs(*load_model(folder), samples)
        out[name] = torch.cat([kl_per_position(p, q) for p, q in zip(dense, pruned)]).mean().item()
    return out


def test_flap_scores_pick_channels_that_diverge_less_than_magnitude_pruning(kl_by_method):
    # Held at 25%, 50% and 75% per layer (bench/flap_quality.py). Bias vs no bias is not asserted:
    # the bias helped at 50% but hurt at 75% there, so that ordering is not robust on this model.
    assert 0 < kl_by_method["flap+bias"] < kl_by_method["magnitude"], kl_by_method
    assert 0 < kl_by_method["flap"] < kl_by_method["magnitude"], kl_by_method
