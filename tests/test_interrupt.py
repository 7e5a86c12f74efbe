"""Real interrupts: Ctrl-C (SIGINT) and SIGTERM sent to a running harness mid-replay, then a resume.

One chain of three real runs of the same command on one results folder: the first is
interrupted with SIGINT, the second (which resumes the first) with SIGTERM, the third resumes
the second and completes. Every file written is then searched for the server's per-run API
key and for the HF_TOKEN the harness ran with.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import group_alive, run_cli, spawn

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
LIMIT = 24
STARTED_REQUESTS = 2  # completed requests on disk before the signal is sent
# Every answer is forced to this length, so the suite is still running when the signal
# arrives however fast the machine is.
FORCED_TOKENS = 120
HF_TOKEN = "hf_" + secrets.token_hex(16)
MARKER = "model_code_was_imported"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_TOKEN": HF_TOKEN}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _server(config_path: Path) -> tuple[int, str] | None:
    """(process group, VLLM_API_KEY) of the server started with --config config_path, read from /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(config_path).encode() not in (proc / "cmdline").read_bytes().split(b"\0"):
                continue
            env = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
            return os.getpgid(int(proc.name)), env[b"VLLM_API_KEY"].decode()
        except (OSError, ProcessLookupError, KeyError):
            continue
    return None


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


class Chain:
    """The results folder, the command and what each interrupted run left."""

    def __init__(self, root: Path, model: Path) -> None:
        self.root, self.results = root, root / "results"
        self.final: subprocess.CompletedProcess | None = None
        self.command = [sys.executable, "-m", "harness", "+variant=bf16", f"workload.limit={LIMIT}", "trials=1",
                        "energy.idle_s=1", "energy.meter=modeled", f"model.path={model}",
                        "sampling.ignore_eos=true", f"sampling.max_tokens={FORCED_TOKENS}",
                        f"results_dir={self.results}", f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'hydra'}"]
        self.interrupted: dict[str, dict] = {}
        self.api_keys: list[str] = []

    def interrupt(self, sig: signal.Signals) -> dict:
        """Runs the command, sends ``sig`` to its process group mid-replay, returns what happened."""
        known = set((self.results / "runs").glob("*")) if (self.results / "runs").exists() else set()
        # spawn() gives the harness default SIGINT/SIGTERM handling (a background shell would
        # start it with SIGINT ignored) and kills its tree, server included, whatever happens.
        with spawn(self.command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   text=True) as proc:
            run_dir, server = self._wait_for_replay(proc, known)
            os.killpg(proc.pid, sig)
            sent = time.monotonic()
            output, _ = proc.communicate(timeout=600)  # a hang guard, not a speed requirement
            exit_s = time.monotonic() - sent
        self.api_keys.append(server[1])
        print(f"{sig.name}: harness exited {exit_s:.1f} s after the signal")  # a figure, not an assertion
        outcome = {"run_dir": run_dir, "server_pgid": server[0], "code": proc.returncode, "output": output}
        self.interrupted[sig.name] = outcome
        return outcome

    def _wait_for_replay(self, proc: subprocess.Popen, known: set[Path]) -> tuple[Path, tuple[int, str]]:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            runs = self.results / "runs"
            new = [d for d in runs.glob("*") if d not in known] if runs.exists() else []
            if new and len(_lines(new[0] / "requests.jsonl")) >= STARTED_REQUESTS:
                server = _server(new[0] / "vllm_config.yaml")
                assert server is not None, "no vLLM server process found for the run"
                return new[0], server
            time.sleep(0.1)
        raise AssertionError(f"the replay never started:\n{(proc.communicate()[0] or '')[-3000:]}")


@pytest.fixture(scope="module")
def chain(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """SIGINT, then SIGTERM (its run resumes the first), then a rerun that resumes and completes."""
    root = tmp_path_factory.mktemp("interrupt")
    model = shutil.copytree(tiny_model_dir, root / "model")
    # Code shipped in the model folder (as a seed model's plugin): must never be imported.
    (model / "seed_plugin").mkdir()
    (model / "seed_plugin" / "__init__.py").write_text(
        f"from pathlib import Path\nPath({str(root / MARKER)!r}).write_text('imported')\n")
    chain = Chain(root, model)
    chain.interrupt(signal.SIGINT)
    chain.interrupt(signal.SIGTERM)
    chain.final = run_cli(chain.command, cwd=REPO, env=_env(), timeout=900)
    return chain


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_stops_everything_in_one_line(chain, sig):
    outcome = chain.interrupted[sig]
    assert outcome["code"] == 130, outcome["output"][-3000:]
    assert "Traceback" not in outcome["output"], outcome["output"][-3000:]
    assert "rerun the same command to resume" in outcome["output"]
    assert not group_alive(outcome["server_pgid"])
    assert _processes_naming(str(outcome["run_dir"])) == []  # no orphan server, engine or worker


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_run_is_recorded_whole_and_honest(chain, sig):
    run_dir = chain.interrupted[sig]["run_dir"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and sig in result["error"] and "interrupted" in result["error"]
    requests = _lines(run_dir / "requests.jsonl")
    assert len(requests) >= STARTED_REQUESTS and all(r["error"] is None for r in requests)
    assert len({r["id"] for r in requests}) == len(requests)
    rows = {r["run_id"]: r for r in _lines(chain.results / "runs.jsonl")}
    assert rows[run_dir.name]["status"] == "failed" and sig in rows[run_dir.name]["error"]
    # The energy measured before the signal is kept, labelled partial, with its source.
    windows = {w["name"]: w for w in result["energy"]["windows"]}
    assert set(windows) == {"idle", "suite_partial"} and result["energy"]["source"] == "modeled"
    assert windows["suite_partial"]["energy_j"] > 0 and windows["suite_partial"]["duration_s"] > 0
    assert (run_dir / "power_trace.csv").is_file() or list(run_dir.glob("power_trace*"))


def test_no_half_written_file_is_left(chain):
    leftovers = [p for p in chain.root.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert leftovers == []


def test_each_rerun_resumes_the_interrupted_run(chain):
    first, second = chain.interrupted["SIGINT"], chain.interrupted["SIGTERM"]
    assert f"resuming failed run {first['run_dir'].name}" in second["output"]
    proc = chain.final
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming failed run {second['run_dir'].name}" in proc.stdout
    rows = _lines(chain.results / "runs.jsonl")
    assert [r["status"] for r in rows] == ["failed", "failed", "ok"]
    result = json.loads((chain.results / "runs" / rows[-1]["run_id"] / "result.json").read_text())
    resume = result["provenance"]["resume"]
    assert resume["resumed_from"] == second["run_dir"].name
    assert resume["reused_requests"] == len(_lines(second["run_dir"] / "requests.jsonl"))
    assert resume["reused_requests"] + resume["replayed_requests"] == LIMIT
    assert len(result["quality"]["items"]) == LIMIT


def test_no_key_or_token_in_any_file_and_no_model_code_imported(chain):
    assert len(chain.api_keys) == 2 and chain.api_keys[0] != chain.api_keys[1]  # a fresh key per run
    secrets_ = [HF_TOKEN.encode(), *(k.encode() for k in chain.api_keys)]
    files = [p for p in chain.root.rglob("*") if p.is_file() and "model" not in p.relative_to(chain.root).parts[:1]]
    assert any(p.name == "server.log" for p in files) and any(p.name == "result.json" for p in files)
    leaks = [str(p) for p in files for s in secrets_ if s in p.read_bytes()]
    assert leaks == []
    assert not (chain.root / MARKER).exists()
