"""Hub checkpoints are fetched by the build step, before any server starts, and the server gets a folder.

Nothing here reaches the hub: the cached case runs with HF_HUB_OFFLINE=1 over a hub cache laid out as
huggingface_hub lays it out (refs/main naming a commit, blobs, snapshots/<commit>/ linking to them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.build.variant import is_hub_id, local_model_dir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "harness" / "assets" / "tiny-gemma4"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(("value", "hub"), [
    ("google/gemma-4-E4B-it", True), ("./google/gemma-4-E4B-it", False), ("/models/gemma", False),
    ("~/gemma", False), ("models/google/gemma", False), ("gemma", False),
])
def test_hub_ids_and_folder_paths_are_told_apart(value: str, hub: bool) -> None:
    assert is_hub_id(value) is hub


def test_an_existing_folder_shaped_like_a_hub_id_is_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "tiny-vlm").mkdir(parents=True)
    (tmp_path / "acme" / "tiny-vlm" / "config.json").write_text("{}")
    assert not is_hub_id("acme/tiny-vlm")
    assert local_model_dir("acme/tiny-vlm") == Path("acme/tiny-vlm")  # never looked up on the hub


def _hub_cache(root: Path, repo_id: str) -> Path:
    """A hub cache holding one snapshot of ``repo_id`` (the tiny model's files), as snapshot_download leaves it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, source in enumerate(sorted(TINY.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(source, blob)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def _build_offline(tmp_path: Path, cache: Path, repo_id: str) -> dict:
    """build_variant for model.path=repo_id in a process with HF_HUB_OFFLINE=1 (read when huggingface_hub loads)."""
    code = ("import json, sys\n"
            "from harness.build.variant import build_variant\n"
            "from harness.config.schema import compose\n"
            "from harness.errors import HarnessError\n"
            "logs = []\n"
            "try:\n"
            f"    out = {{'dir': str(build_variant(compose(['model.path={repo_id}']), log=logs.append))}}\n"
            "except HarnessError as err:\n"
            "    out = {'error': str(err)}\n"
            "print(json.dumps({**out, 'logs': logs}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cached_hub_checkpoint_is_served_from_its_snapshot_folder(tmp_path: Path) -> None:
    snapshot = _hub_cache(tmp_path / "hub", "acme/tiny-vlm")
    out = _build_offline(tmp_path, tmp_path / "hub", "acme/tiny-vlm")
    assert Path(out["dir"]) == snapshot  # the folder the server is given: no hub id reaches vLLM
    assert (Path(out["dir"]) / "model.safetensors").is_file()
    assert out["logs"] and "acme/tiny-vlm" in out["logs"][0] and "before the server starts" in out["logs"][0]


def test_an_uncached_hub_checkpoint_offline_fails_in_one_line_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    out = _build_offline(tmp_path, tmp_path / "hub", "acme/absent-vlm")
    assert "cannot fetch acme/absent-vlm from the hub" in out["error"]
    assert out["error"].endswith("download it first and set model.path to the folder")
