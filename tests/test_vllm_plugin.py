"""The vLLM plugin serving FLAP-pruned Gemma 4: real vLLM answers equal transformers', biases included."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.build.calibration import suite_source
from tests.procs import run_cli
from tests.pruned_tiny import down_proj_input_stats, edit_weights, load_reference, make_pruned

torch.set_num_threads(1)

WIDTHS = [192, 128, 256, 160]  # of 256: layer 2 unpruned (its bias stays zero), the KV-shared layer 3 pruned
N_SAMPLES = 16
MAX_TOKENS = 8
TOP_LOGPROBS = 20
# First-token log-probabilities, vLLM vs transformers, both float32: measured within 2e-5 here.
# Dropping the FLAP bias moves them by 0.012 to 0.06 on this checkpoint, so 1e-3 separates the two.
LOGPROB_TOL = 1e-3
FP8_LOGPROB_TOL = 0.05  # FP8 kernels: vLLM's per-token activation quantization vs transformers' (measured 5e-3)
PROBE = Path(__file__).with_name("vllm_build_probe.py")


@pytest.fixture(scope="module")
def samples():
    from harness.replay.workloads.base import load_samples

    return load_samples(0, "test", N_SAMPLES)


@pytest.fixture(scope="module")
def pruned_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model FLAP-pruned to WIDTHS, compensation biases from 8 train-split prompts."""
    from harness.replay.workloads.base import load_samples

    stats = down_proj_input_stats(tiny_model_dir, load_samples(0, "train", 8))
    return make_pruned(tiny_model_dir, tmp_path_factory.mktemp("flap") / "pruned", WIDTHS, stats)


def _serve_and_ask(model_dir: Path, samples, run_dir: Path) -> dict:
    """Greedy answers and first-token top log-probabilities from a real vLLM server (float32)."""
    import openai

    from harness.config.schema import compose
    from harness.replay.client import chat_messages
    from harness.serve.vllm import VllmServer

    run = compose(["serve.startup_timeout_s=600"])
    answers = {}
    with VllmServer(model_dir, run.serve, run_dir, served_model_name="pruned", dtype="float32") as server:
        client = openai.OpenAI(base_url=server.target.base_url, api_key=server.target.api_key, timeout=300)
        for sample in samples:
            reply = client.chat.completions.create(
                model="pruned", messages=chat_messages(sample), temperature=0, max_tokens=MAX_TOKENS, logprobs=True,
                top_logprobs=TOP_LOGPROBS, extra_body={"return_tokens_as_token_ids": True})
            choice = reply.choices[0]
            top = {int(t.token.removeprefix("token_id:")): t.logprob for t in choice.logprobs.content[0].top_logprobs}
            answers[sample.id] = {"text": choice.message.content or "", "prompt_tokens": reply.usage.prompt_tokens,
                                  "top": top}
    return {"answers": answers, "log": server.log_path.read_text(errors="replace")}


def _reference(model_dir: Path, samples, zero_bias: bool = False) -> dict:
    """transformers' greedy answers, prompt lengths and first-token log-softmax per sample."""
    from harness.score.offline import generate_records
    from harness.tiny.train import encode

    model, processor = load_reference(model_dir, zero_bias=zero_bias)
    texts = {r.id: r.output_text for r in generate_records(model, processor, samples, MAX_TOKENS)}
    out = {}
    with torch.no_grad():
        for sample in samples:
            batch = encode(processor, [sample], with_answers=False)
            batch.pop("labels")
            log_probs = torch.log_softmax(model(**batch).logits[0, -1].float(), dim=-1)
            out[sample.id] = {"text": texts[sample.id], "prompt_tokens": batch["input_ids"].shape[1],
                              "log_probs": log_probs}
    return out


def _logprob_gaps(served: dict, reference: dict) -> dict[str, float]:
    """Per sample: largest |served - reference| log-probability over the served top tokens."""
    return {sid: max(abs(lp - reference[sid]["log_probs"][tok].item()) for tok, lp in a["top"].items())
            for sid, a in served.items()}


def test_plugin_entry_point_is_installed_and_importing_it_does_not_import_vllm():
    from importlib.metadata import entry_points

    import compress.vllm_plugin as plugin

    (entry,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == plugin.PLUGIN_NAME]
    assert entry.load() is plugin.register and plugin.entry_point_installed()
    code = "import sys, compress.vllm_plugin; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_platform_check_passes_pruned_and_stock_checkpoints(pruned_dir, tiny_model_dir):
    from harness.serve.capabilities import check_plugin_support

    check_plugin_support(pruned_dir, {})
    check_plugin_support(tiny_model_dir, {"VLLM_PLUGINS": ""})  # stock Gemma 4 needs no plugin


@pytest.mark.parametrize("value", ["", "some_other_plugin", "some_other_plugin, flap_gemma4"])
def test_platform_check_refuses_a_pruned_checkpoint_vllm_would_not_load_the_plugin_for(pruned_dir, value):
    from harness.errors import PlatformError
    from harness.serve.capabilities import check_plugin_support

    with pytest.raises(PlatformError, match="add flap_gemma4 to it or unset it"):
        check_plugin_support(pruned_dir, {"VLLM_PLUGINS": value})


def test_server_refuses_a_pruned_checkpoint_without_widths_before_starting_vllm(broken_dirs, tmp_path):
    from harness.config.schema import compose
    from harness.errors import PlatformError
    from harness.serve.vllm import VllmServer

    server = VllmServer(broken_dirs["no_widths"], compose([]).serve, tmp_path, served_model_name="m")
    with pytest.raises(PlatformError, match="no text_config.intermediate_sizes: re-export"):
        server.start()
    assert server.pgid is None and not server.log_path.exists()


def test_platform_check_refuses_a_pruned_checkpoint_with_the_stock_architecture(pruned_dir, tmp_path):
    from harness.errors import PlatformError
    from harness.serve.capabilities import check_plugin_support

    folder = shutil.copytree(pruned_dir, tmp_path / "stock-arch")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Gemma4ForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PlatformError, match=r'set "architectures": \["FlapGemma4ForConditionalGeneration"\]'):
        check_plugin_support(folder, {})


@pytest.fixture(scope="module")
def served(pruned_dir, samples, tmp_path_factory):
    return _serve_and_ask(pruned_dir, samples, tmp_path_factory.mktemp("served-pruned"))


@pytest.fixture(scope="module")
def reference(pruned_dir, samples):
    return _reference(pruned_dir, samples)


@pytest.mark.server
def test_vllm_builds_the_pruned_checkpoint_with_the_plugin(served):
    assert "Resolved architecture: FlapGemma4ForConditionalGeneration" in served["log"]


@pytest.mark.server
def test_served_greedy_answers_equal_transformers(served, reference):
    answers = served["answers"]
    assert {sid: (a["text"].strip(), a["prompt_tokens"]) for sid, a in answers.items()} == \
        {sid: (r["text"].strip(), r["prompt_tokens"]) for sid, r in reference.items()}


@pytest.mark.server
def test_served_first_token_log_probs_equal_transformers(served, reference):
    answers = served["answers"]
    top1 = {sid: max(a["top"], key=a["top"].get) for sid, a in answers.items()}
    assert top1 == {sid: int(r["log_probs"].argmax()) for sid, r in reference.items()}
    gaps = _logprob_gaps(answers, reference)
    assert max(gaps.values()) < LOGPROB_TOL, gaps


@pytest.mark.server
def test_served_log_probs_would_miss_a_dropped_bias(served, pruned_dir, samples):
    """Without its down_proj biases the model answers measurably differently: so the equality above needs them."""
    no_bias = _reference(pruned_dir, samples, zero_bias=True)
    gaps = _logprob_gaps(served["answers"], no_bias)
    assert min(gaps.values()) > LOGPROB_TOL, gaps


@pytest.fixture(scope="module")
def broken_dirs(pruned_dir, tmp_path_factory):
    """Pruned checkpoints with one contract break each: name -> folder."""
    root = tmp_path_factory.mktemp("flap-broken")

    def drop_bias(tensors):
        del tensors["model.language_model.layers.1.mlp.down_proj.bias"]

    def add_gate_bias(tensors):  # a bias the plugin has no parameter for: stock vLLM would skip it silently
        tensors["model.language_model.layers.0.mlp.gate_proj.bias"] = torch.ones(WIDTHS[0])

    dirs = {"no_bias": edit_weights(pruned_dir, root / "no_bias", drop_bias),
            "gate_bias": edit_weights(pruned_dir, root / "gate_bias", add_gate_bias)}
    for name, sizes in (("no_widths", None), ("short_widths", WIDTHS[:-1])):
        folder = shutil.copytree(pruned_dir, root / name)
        config = json.loads((folder / "config.json").read_text())
        config["text_config"].pop("intermediate_sizes")
        if sizes is not None:
            config["text_config"]["intermediate_sizes"] = sizes
        (folder / "config.json").write_text(json.dumps(config))
        dirs[name] = folder
    return dirs


@pytest.fixture(scope="module")
def built(pruned_dir, broken_dirs, tiny_model_dir):
    """Folder -> what vLLM's own loader made of it in a fresh process (tests/vllm_build_probe.py)."""
    folders = [pruned_dir, tiny_model_dir, *broken_dirs.values()]
    with socket.socket() as sock:  # a free port for the probe's one-process torch.distributed group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_cli([sys.executable, str(PROBE), str(port), *map(str, folders)], timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return {Path(k): v for k, v in json.loads(line.removeprefix("RESULT ")).items()}


@pytest.mark.server
def test_vllm_builds_per_layer_widths_and_leaves_stock_gemma4_alone(built, pruned_dir, tiny_model_dir):
    assert built[pruned_dir] == {"class": "FlapGemma4ForConditionalGeneration", "widths": WIDTHS}
    assert built[tiny_model_dir] == {"class": "Gemma4ForConditionalGeneration", "widths": [256] * 4}


@pytest.mark.server
@pytest.mark.parametrize(("name", "error", "says"), [
    ("no_bias", "FlapWeightsError", "layers.1.mlp.down_proj.bias"),
    ("no_widths", "FlapConfigError", "no text_config.intermediate_sizes"),
    ("short_widths", "FlapConfigError", "3 widths for 4 decoder layers"),
    ("gate_bias", "FlapWeightsError", "layers.0.mlp.gate_proj.bias has no parameter"),
])
def test_vllm_refuses_a_broken_pruned_checkpoint_loudly(built, broken_dirs, name, error, says):
    outcome = built[broken_dirs[name]]
    assert outcome.get("error") == error and says in outcome["message"], outcome
    assert "re-export" in outcome["message"] or "remove it from the checkpoint" in outcome["message"]


@pytest.mark.server
def test_project_pruner_then_fp8_dynamic_is_served_through_the_plugin(tiny_model_dir, samples, tmp_path_factory):
    """compress's own FLAP pruner (not the test helper above), then FP8: served equal to transformers."""
    from compress import compress_checkpoint
    from compress.configs import config_from_name
    from compress.flap_config import FlapConfig

    root = tmp_path_factory.mktemp("flap-fp8")
    pruned = compress_checkpoint(tiny_model_dir, root / "pruned",
                                 FlapConfig(ratio=0.3, multiple=32, num_samples=8, protect_roles=()), suite_source())
    widths = json.loads((pruned / "config.json").read_text())["text_config"]["intermediate_sizes"]
    assert min(widths) < 256 and all(w % 32 == 0 for w in widths)  # the pruner really removed channels
    quantized = compress_checkpoint(pruned, root / "fp8", config_from_name("fp8_dynamic"))
    served = _serve_and_ask(quantized, samples, tmp_path_factory.mktemp("served-pruned-fp8"))
    reference = _reference(quantized, samples)
    assert "Resolved architecture: FlapGemma4ForConditionalGeneration" in served["log"]
    assert {sid: a["text"].strip() for sid, a in served["answers"].items()} == \
        {sid: r["text"].strip() for sid, r in reference.items()}
    gaps = _logprob_gaps(served["answers"], reference)
    assert max(gaps.values()) < FP8_LOGPROB_TOL, gaps
