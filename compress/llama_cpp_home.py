"""Where the project's llama.cpp build lives, and its parts by name.

`bash scripts/install.sh` builds llama.cpp from a pinned source (scripts/build_llama_cpp.sh)
into a cache folder and links it into the environment as ``<venv>/llama.cpp``. The folder holds:

- ``bin/llama-server``, ``bin/llama-quantize``: the two programs the harness runs;
- ``src/convert_hf_to_gguf.py`` with ``src/conversion/`` and ``src/gguf-py/``: the converter,
  from the same source tree as the programs, so writer and reader agree on the format;
- ``BUILD.json``: the source (version, sha256), the cmake flags, the CPU flags and the build time.

``HARNESS_LLAMA_CPP_HOME`` names another folder with the same layout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ENV = "HARNESS_LLAMA_CPP_HOME"
PROGRAMS = ("llama-server", "llama-quantize")


class LlamaCppMissing(FileNotFoundError):
    """llama.cpp (or one of its parts) is not built here; the message names the command that builds it."""


def llama_cpp_home() -> Path:
    """The build folder: $HARNESS_LLAMA_CPP_HOME, else the environment's ``llama.cpp`` link."""
    configured = os.environ.get(ENV)
    return Path(configured).expanduser() if configured else Path(sys.prefix) / "llama.cpp"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        home = llama_cpp_home()
        raise LlamaCppMissing(f"{what} not found at {path}: build llama.cpp with `bash scripts/install.sh` "
                              f"(or point {ENV} at a build; looked in {home})")
    return path


def binary(name: str) -> Path:
    """One of PROGRAMS, as an absolute path."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown llama.cpp program {name!r}: one of {', '.join(PROGRAMS)}")
    return _need(llama_cpp_home() / "bin" / name, name)


def converter() -> Path:
    """convert_hf_to_gguf.py of the same source tree as the programs."""
    return _need(llama_cpp_home() / "src" / "convert_hf_to_gguf.py", "convert_hf_to_gguf.py")


def gguf_py() -> Path:
    """The gguf-py package folder of that tree (put it on PYTHONPATH to run the converter)."""
    return _need(llama_cpp_home() / "src" / "gguf-py", "gguf-py")


def build_info() -> dict:
    """BUILD.json of the build, or {} when there is none."""
    try:
        return json.loads((llama_cpp_home() / "BUILD.json").read_text())
    except (OSError, ValueError):
        return {}


def available() -> bool:
    """Whether every program and the converter are there."""
    try:
        for name in PROGRAMS:
            binary(name)
        converter()
    except LlamaCppMissing:
        return False
    return True
