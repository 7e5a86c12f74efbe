"""Secrets kept out of results: the API key and secret-looking serve.env values become a marker."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
# Environment variable names whose values are credentials (HF_TOKEN, OPENAI_API_KEY, ...).
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def redact_serve(serve: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a serve section (as plain data) with api_key and secret env values replaced."""
    out = dict(serve)
    if out.get("api_key") is not None:
        out["api_key"] = REDACTED
    env = out.get("env")
    if isinstance(env, Mapping):
        out["env"] = {k: (REDACTED if SECRET_NAME.search(str(k)) else v) for k, v in env.items()}
    return out


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a resolved run config (plain data) safe to write to results and logs."""
    out = dict(config)
    if isinstance(out.get("serve"), Mapping):
        out["serve"] = redact_serve(out["serve"])
    return out
