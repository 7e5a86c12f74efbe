"""The embedded default model: a tiny Gemma 4 vision-language model built and trained here."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-gemma4"
