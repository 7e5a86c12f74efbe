"""Builds checkpoints with vLLM's own model loader in this process, as its CPU worker does; prints one JSON line.

    python tests/vllm_build_probe.py PORT DIR [DIR ...]

Per folder: {"class": model class, "widths": MLP width per decoder layer} when vLLM builds and
loads it, else {"error": exception class, "message": ...}. vLLM's general plugins load as
in a served engine (when its engine arguments are parsed). Run in a fresh process: vLLM's
distributed state is set up once per process.
"""

from __future__ import annotations

import json
import sys


def build(path: str, state: dict) -> dict:
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model

    config = EngineArgs(model=path, dtype="float32", enforce_eager=True, max_model_len=512).create_engine_config()
    with set_current_vllm_config(config):
        if not state:  # one single-process "cluster" for every folder, as a tp=1 worker sets up
            init_distributed_environment(1, 0, f"tcp://127.0.0.1:{state.setdefault('port', sys.argv[1])}", 0,
                                         backend="gloo")
            initialize_model_parallel(1, 1)
        model = get_model(vllm_config=config)
    widths = [layer.mlp.down_proj.input_size for layer in model.language_model.model.layers]
    return {"class": type(model).__name__, "widths": widths}


def main() -> None:
    from vllm.v1.worker.cpu_model_runner import _set_torch_accelerator_to_noop

    _set_torch_accelerator_to_noop()  # what vLLM's CPU model runner does before loading
    state: dict = {}
    out = {}
    for path in sys.argv[2:]:
        try:
            out[path] = build(path, state)
        except Exception as err:  # noqa: BLE001 - reported to the test, which asserts on it
            out[path] = {"error": type(err).__name__, "message": str(err)}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
