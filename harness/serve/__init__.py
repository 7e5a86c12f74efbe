"""The serve step: vLLM's server lifecycle, platform capabilities, GPU slots for sweeps."""
