"""The embedded default model: a tiny Gemma 4 vision-language model built and trained here."""

import json
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-gemma4"


def trained_budgets(model_dir: Path = DEFAULT_MODEL_DIR) -> tuple[int, ...]:
    """The image budgets (max_soft_tokens) the tiny model was trained at, from its training log.

    A log without the field comes from a model trained at the processor's default budget only (70).
    """
    log = Path(model_dir) / "training_log.json"
    if not log.is_file():
        return (70,)
    return tuple(json.loads(log.read_text(encoding="utf-8")).get("budgets", [70]))
