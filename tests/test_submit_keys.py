"""The recorded `vllm serve` keys of the pinned GPU vLLM: how bench/vllm_gpu_args.py reads them, checked on the
installed vLLM, whose parser can be built here (no server starts)."""

from __future__ import annotations

import argparse
import importlib
import json
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

from bench.vllm_gpu_args import SERVE_MODULE, _Source, folder_reader, serve_keys
from harness.submit.target import keys_record, load_target, pinned_vllm


def test_static_reading_finds_exactly_the_options_of_the_live_parser():
    """The reading applied to the installed (CPU) vLLM's source equals the parser that vLLM builds."""
    import vllm
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    root = Path(vllm.__file__).parents[1]
    keys, files = serve_keys(folder_reader(root))
    module = _Source(folder_reader(root)).imported_from(SERVE_MODULE, "make_arg_parser")
    parser = importlib.import_module(module).make_arg_parser(FlexibleArgumentParser())
    live = {option[2:] for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"
            and not (isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-"))}
    assert set(keys) == live
    assert "vllm/entrypoints/cli/serve.py" in files and "vllm/engine/arg_utils.py" in files


def test_the_record_is_of_the_pinned_vllm_and_its_compressed_tensors_is_the_one_installed():
    record = json.loads(keys_record(pinned_vllm()).read_text())
    assert record["vllm_version"] == pinned_vllm() and record["wheel"].startswith(f"vllm-{pinned_vllm()}-")
    assert len(record["wheel_sha256"]) == 64 and record["keys"] == sorted(set(record["keys"]))
    assert {"model", "enforce-eager", "kv-cache-dtype", "max-model-len", "chat-template"} <= set(record["keys"])
    # The folder's quantization_config is parsed with this compressed-tensors: the one the target's vLLM pins.
    assert metadata.version("compressed-tensors") in SpecifierSet(record["requires"]["compressed-tensors"])
    assert load_target().keys == frozenset(record["keys"])
