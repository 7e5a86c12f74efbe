"""The llama.cpp build's locator lives in compress (which never imports harness); the harness reads it from here."""

from compress.llama_cpp_home import (  # noqa: F401
    ENV,
    PROGRAMS,
    LlamaCppMissing,
    available,
    binary,
    build_info,
    converter,
    gguf_py,
    llama_cpp_home,
)
