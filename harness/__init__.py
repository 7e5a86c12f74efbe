"""Energy benchmarking and evaluation harness for compressed vision-language models."""

__version__ = "0.1.0"
