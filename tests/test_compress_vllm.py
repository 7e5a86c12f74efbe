"""vLLM (CPU build) loads and runs the tiny model's fp8_dynamic and w8a8_int8 checkpoints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from compress import compress_checkpoint, config_from_name

# vLLM's offline engine spawns processes, so it must run as a script's __main__.
SCRIPT = textwrap.dedent('''
    import sys
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        llm = LLM(model=sys.argv[1], enforce_eager=True, max_model_len=512, max_num_seqs=1)
        params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        out = llm.generate(["What colour is the shape?"], params)[0].outputs[0]
        print("GENERATED_TOKENS", len(out.token_ids))
''')
EXPECTED_SCHEME = {"fp8_dynamic": "CompressedTensorsW8A8Fp8", "w8a8_int8": "CompressedTensorsW8A8Int8"}


@pytest.mark.server
@pytest.mark.parametrize("scheme", list(EXPECTED_SCHEME))
def test_vllm_serves_the_compressed_tiny_model(tiny_model_dir, tmp_path, scheme):
    out = compress_checkpoint(tiny_model_dir, tmp_path / scheme, config_from_name(scheme))
    script = tmp_path / "run_vllm.py"
    script.write_text(SCRIPT)
    # DEBUG logging is where vLLM names the compressed-tensors scheme chosen per layer.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "DEBUG"}
    run = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "GENERATED_TOKENS 8" in log
    served = set(re.findall(rf"Using scheme: {EXPECTED_SCHEME[scheme]} for \S+\.layers\.(\d+\.\S+)", log))
    assert served == _fused_names(out)


def _fused_names(folder) -> set[str]:
    """'<layer>.<module>' of each quantized linear as vLLM names it after fusing shards."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = {k.split(".layers.", 1)[1].rsplit(".", 1)[0] for k in f.keys() if k.endswith(".weight_scale")}
    return {_vllm_name(n, names) for n in names}


def _vllm_name(name: str, names: set[str]) -> str:
    parent, leaf = name.rsplit(".", 1)
    # q/k/v fuse into qkv_proj; a KV-shared layer has q_proj alone, which stays q_proj.
    if leaf in ("q_proj", "k_proj", "v_proj") and f"{parent}.k_proj" in names:
        return f"{parent}.qkv_proj"
    if leaf in ("gate_proj", "up_proj"):
        return f"{parent}.gate_up_proj"
    return name
