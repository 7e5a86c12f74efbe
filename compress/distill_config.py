"""DistillConfig: how a pruned checkpoint is distilled toward its unpruned teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DistillConfig:
    """Forward-KL plus hidden-state distillation of the pruned student's decoder layers.

    Attributes:
        version: config schema version; bump when a field's meaning changes.
        steps: optimizer steps (AdamW, constant learning rate).
        batch_size: sequences per step (gradients accumulated one sequence at a time).
        lr: learning rate.
        temperature: softmax temperature of both distributions in the KL term.
        kl_weight: weight of KL(teacher || student) over text positions.
        hidden_weight: weight of the per-layer hidden-state MSE (scale-normalised).
        num_samples: train-split sequences (prompt + reference answer) to draw batches from.
        seed: seed of the samples, the batch order and torch.
        eval_samples: held-out sequences (drawn with seed + 1) on which the mean KL to the
            teacher is measured before and after; recorded in recipe.json.
        eval_every: steps between held-out evaluations; the best evaluated state is kept
            (0 means steps // 5).
    """

    SCHEME: ClassVar[str] = "distill"
    version: int = 1
    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-4
    temperature: float = 1.0
    kl_weight: float = 1.0
    hidden_weight: float = 1.0
    num_samples: int = 512
    seed: int = 0
    eval_samples: int = 32
    eval_every: int = 0

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0 or self.num_samples <= 0 or self.eval_samples <= 0:
            raise ValueError("steps, batch_size, num_samples and eval_samples must be positive")
        if self.eval_every < 0:
            raise ValueError("eval_every must be >= 0 (0: every steps // 5)")
        if self.eval_every == 0:
            object.__setattr__(self, "eval_every", max(1, self.steps // 5))
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be positive")
        if self.kl_weight < 0 or self.hidden_weight < 0 or self.kl_weight + self.hidden_weight == 0:
            raise ValueError("kl_weight and hidden_weight must be >= 0 and not both 0")
