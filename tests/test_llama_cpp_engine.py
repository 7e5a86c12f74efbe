"""The llama_cpp engine: a real llama-server on the tiny model's GGUF, launched the judges' way, and
a GGUF variant run end to end through the CLI, gated against the bf16 baseline served by vLLM."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from harness.build.calibration import suite_source
from harness.config.schema import compose
from harness.errors import ServerError
from harness.replay.client import replay
from harness.replay.workloads import load_workload
from harness.serve.generation import chat_template
from harness.serve.llama_cpp import LlamaServer, check_llama_config, gguf_files, llama_args
from tests.procs import group_alive, run_cli

REPO = Path(__file__).resolve().parents[1]
VARIANT = "gguf_q8_0"


@pytest.fixture(scope="module")
def gguf_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a Q8_0 GGUF variant folder, made by `compress` with the project's llama.cpp build."""
    from compress import compress_checkpoint
    from compress.configs import config_from_name

    out = tmp_path_factory.mktemp("gguf") / VARIANT
    return compress_checkpoint(tiny_model_dir, out, config_from_name(VARIANT), suite_source())


def _server(gguf_dir: Path, run_dir: Path, *overrides: str) -> LlamaServer:
    run = compose([f"+variant={VARIANT}", *overrides])
    return LlamaServer(gguf_dir, run.serve, run.engine, run_dir, served_model_name="judged")


def _listening(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every socket the server's process group listens on."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found |= {tuple(c.laddr) for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.mark.server
def test_llama_server_runs_on_loopback_behind_its_key_and_stops_with_its_group(gguf_dir, tiny_model_dir, tmp_path):
    with _server(gguf_dir, tmp_path) as server:
        pgid, root = server.pgid, server.target.base_url.removesuffix("/v1")
        assert _listening(pgid) == {("127.0.0.1", server.port)}
        assert httpx.get(f"{root}/v1/models").status_code == 401  # no key, no answer
        keyed = httpx.get(f"{root}/v1/models", headers={"Authorization": f"Bearer {server.api_key}"})
        assert [m["id"] for m in keyed.json()["data"]] == ["judged"]
        # The key travels by environment only: never in argv, the llama config or the log.
        argv = " ".join(psutil.Process(pgid).cmdline())
        assert server.api_key not in argv and server.api_key not in server.config_path.read_text()
        # The judges' launch: the folder's two GGUFs, our run's address and name, nothing else.
        model, mmproj = gguf_files(gguf_dir)
        asked = llama_args(server.engine_config.llama_config)  # the model's llama config (conf/model/tiny.yaml)
        assert psutil.Process(pgid).cmdline()[1:] == ["--model", str(model), "--mmproj", str(mmproj), "--alias",
                                                      "judged", "--host", "127.0.0.1", "--port", str(server.port),
                                                      *asked]
        settings = server.effective
    assert not group_alive(pgid)
    log, probe = server.log_path.read_text(), (tmp_path / "llama_probe.log").read_text()
    assert "model loaded" in log and server.api_key not in log + probe
    # The submission's llama config, nothing of ours: the image size the tiny model was trained at.
    assert yaml.safe_load(server.config_path.read_text()) == {"image-min-tokens": 64, "image-max-tokens": 70}
    # Read back from the server: what the judges' llama-server really runs with.
    assert settings["n_ctx"] > 0 and settings["total_slots"] == settings["slots"] >= 1
    assert settings["modalities"]["vision"] is True
    assert settings["chat_template"].strip() == chat_template(tiny_model_dir).strip()
    assert settings["threads"] >= 1 and settings["batch"] >= settings["ubatch"] >= 1
    assert settings["flash_attn"] in ("enabled", "disabled")
    server.stop()  # idempotent


@pytest.mark.server
def test_the_suite_request_reaches_llama_server_with_its_sampling(gguf_dir, tmp_path):
    # Values none of llama-server's defaults (nor the GGUF's, the competition's) have: they can only come from the body.
    run = compose([f"+variant={VARIANT}", "workload.limit=3", "sampling.ignore_eos=true", "sampling.max_tokens=5",
                   "sampling.top_k=7", "sampling.top_p=0.5", "sampling.temperature=0.7"])
    samples = load_workload(run.workload)
    with _server(gguf_dir, tmp_path) as server:
        played = replay(server.target, samples, run.workload, run.sampling, show_progress=False,
                        chat_template_kwargs=run.serve.chat_template_kwargs)
        slots = httpx.get(f"{server.target.base_url.removesuffix('/v1')}/slots",
                          headers={"Authorization": f"Bearer {server.api_key}"}).json()
    assert [r.error for r in played.records] == [None] * 3
    # Usage comes back in the final chunk: prompt tokens include the image's; ignore_eos runs to max_tokens.
    assert all(r.prompt_tokens > 64 and r.output_tokens == 5 for r in played.records)
    used = [s["params"] for s in slots if s.get("params")]  # the slots that decoded a request
    assert used and all((p["top_k"], p["top_p"], p["temperature"]) == (7, pytest.approx(0.5), pytest.approx(0.7))
                        for p in used)


@pytest.mark.server
def test_a_server_that_cannot_load_fails_with_its_log_and_leaves_no_process(gguf_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    model, mmproj = gguf_files(gguf_dir)
    shutil.copy(mmproj, broken / mmproj.name)
    (broken / model.name).write_bytes(b"GGUF" + b"\0" * 64)  # a truncated GGUF
    server = _server(broken, tmp_path / "run")
    server.start()
    pgid = server.pgid
    try:
        with pytest.raises(ServerError, match="llama-server exited") as err:
            server.wait_ready()
    finally:
        server.stop()
    assert not group_alive(pgid)
    assert server.log_path.read_text().strip().splitlines()[-1] in str(err.value)  # the error quotes the log's tail


def _harness(work: Path, *args: str, env: dict | None = None, timeout: int = 1500):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return run_cli([sys.executable, "-m", *args], cwd=work, env=env, timeout=timeout)


@pytest.mark.server
def test_a_gguf_variant_runs_through_the_cli_gated_against_the_vllm_baseline(tmp_path):
    proc = _harness(tmp_path, "harness", f"+variant={VARIANT}", "workload.limit=6", "trials=1", "energy.idle_s=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results" / "runs.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["status"]) for r in rows] == [("bf16", "ok"), (VARIANT, "ok")]
    base, ours = (json.loads((tmp_path / "results" / "runs" / r["run_id"] / "result.json").read_text()) for r in rows)
    assert base["config"]["engine"]["name"] == "vllm" and base["config"]["compress"]["scheme"] == "none"
    assert ours["config"]["engine"]["name"] == "llama_cpp"
    assert ours["gate"]["baseline_run_id"] == base["run_id"] and ours["gate"]["verdict"] is not None
    engine = ours["serve"]["engine"]
    assert engine["name"] == "llama_cpp" and engine["n_ctx"] > 0 and engine["total_slots"] >= 1
    run_dir = tmp_path / "results" / "runs" / ours["run_id"]
    assert (run_dir / "llama_config.yaml").is_file() and "model loaded" in (run_dir / "server.log").read_text()
    # The modeled meter sees llama-server's CPU time: the suite costs more than idle power alone.
    suite = next(w for w in ours["energy"]["windows"] if w["name"] == "suite")
    idle_w = ours["energy"]["trials"][0]["idle_w"]
    assert suite["energy_j"] > idle_w * suite["duration_s"]
    # One leaderboard: both engines in one group, the engine a column.
    board = _harness(tmp_path, "harness.leaderboard", "--results", "results", "--out", "board", timeout=300)
    assert board.returncode == 0, board.stdout[-3000:] + board.stderr[-3000:]
    with (tmp_path / "board" / "leaderboard.csv").open() as f:
        table = {r["variant"]: r for r in csv.DictReader(f)}
    assert (table["bf16"]["engine"], table[VARIANT]["engine"]) == ("vllm", "llama_cpp")
    assert table["bf16"]["group"] == table[VARIANT]["group"]


@pytest.mark.parametrize(("overrides", "env", "says"), [
    (["+variant=bf16", "engine=llama_cpp"], {}, "engine=llama_cpp serves GGUF variants only"),
    ([f"+variant={VARIANT}", "engine=vllm"], {}, "engine=llama_cpp"),
    ([f"+variant={VARIANT}", "trial_server=shared"], {}, "trial_server=auto or fresh"),
    ([f"+variant={VARIANT}", "+engine.llama_config.port=8080"], {}, "the harness sets it"),
    ([f"+variant={VARIANT}", "+engine.llama_config.ctx-sise=8192"], {}, "no option --ctx-sise"),
    ([f"+variant={VARIANT}"], {"HARNESS_LLAMA_CPP_HOME": "/nonexistent/llama.cpp"}, "scripts/install.sh"),
])
def test_bad_engine_input_is_refused_in_one_line_before_any_work(tmp_path, overrides, env, says):
    proc = _harness(tmp_path, "harness", *overrides, timeout=300, env=env)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output[-3000:]
    assert len(output.splitlines()) == 1 and output.startswith("error:") and says in output, output[-3000:]
    assert not (tmp_path / "results" / "runs").exists() and not (tmp_path / ".cache").exists()


def test_a_variant_folder_resolves_like_a_hub_repository(tmp_path):
    (tmp_path / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    (tmp_path / "mmproj-model-F16.gguf").write_bytes(b"GGUF")
    (tmp_path / "recipe.json").write_text("{}")
    assert gguf_files(tmp_path) == (tmp_path / "model-Q4_K_M.gguf", tmp_path / "mmproj-model-F16.gguf")
    (tmp_path / "model-Q8_0.gguf").write_bytes(b"GGUF")  # two models: which one would the judges serve?
    with pytest.raises(ServerError, match="one model GGUF"):
        gguf_files(tmp_path)


def test_the_llama_config_becomes_long_options_and_refuses_what_the_harness_owns():
    assert llama_args({"ctx-size": 8192, "no-mmap": True, "flash-attn": "on", "mlock": False}) == [
        "--ctx-size", "8192", "--no-mmap", "--flash-attn", "on"]
    help_text = "-c,    --ctx-size N   size of the prompt context\n-fa,   --flash-attn [on|off|auto]\n"
    assert check_llama_config({"ctx-size": 4096}, help_text) is None
    assert "no option --ctx-sise" in check_llama_config({"ctx-sise": 4096}, help_text)
    assert "the harness sets it" in check_llama_config({"api-key": "k"}, help_text)
    assert "leading dashes" in check_llama_config({"--ctx-size": 1}, help_text)
