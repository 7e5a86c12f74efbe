"""Merging results folders from several machines into one leaderboard, on real runs of the tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.leaderboard.data import build_board
from harness.merge import MergeError, merge_results
from harness.record.result import read_rows
from tests.real_runs import REPO, real_runs  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.server
OTHER_CPU = "second machine CPU"


def _rows(results: Path) -> list[dict]:
    return read_rows(results / "runs.jsonl")


def _copy_runs(src: Path, dst: Path, run_ids: list[str]) -> Path:
    """A results folder holding only ``run_ids`` of ``src``, files copied as they are."""
    (dst / "runs").mkdir(parents=True)
    lines = [line for line in (src / "runs.jsonl").read_text().splitlines() if json.loads(line)["run_id"] in run_ids]
    (dst / "runs.jsonl").write_text("\n".join(lines) + "\n")
    for run_id in run_ids:
        shutil.copytree(src / "runs" / run_id, dst / "runs" / run_id)
    return dst


def _as_if_from_another_machine(results: Path, run_id: str) -> str:
    """Renames a copied run and changes only the host CPU its provenance records, as a run made on
    a second machine would differ; returns the new run id."""
    new_id = f"{run_id}-m2"
    (results / "runs" / run_id).rename(results / "runs" / new_id)
    path = results / "runs" / new_id / "result.json"
    result = json.loads(path.read_text())
    result["run_id"] = new_id
    result["provenance"]["host"]["cpu_model"] = OTHER_CPU
    path.write_text(json.dumps(result, indent=2))
    rows = [{**r, "run_id": new_id} if r["run_id"] == run_id else r for r in _rows(results)]
    (results / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return new_id


@pytest.fixture()
def two_machines(real_runs, tmp_path):
    """Machine A holds every real run; machine B one run A also has (copied) and two of its own."""
    ids = [r["run_id"] for r in _rows(real_runs)]
    a = _copy_runs(real_runs, tmp_path / "a", ids)
    b = _copy_runs(real_runs, tmp_path / "b", ids[:3])
    own = [_as_if_from_another_machine(b, run_id) for run_id in ids[1:3]]
    return a, b, ids, own


def test_merge_adds_every_run_once_and_groups_by_hardware(two_machines, tmp_path):
    a, b, ids, own = two_machines
    out = tmp_path / "merged"
    report = merge_results(out, [a, b])
    assert sorted(report.added) == sorted(ids + own) and list(report.duplicates) == [ids[0]]
    assert sorted(r["run_id"] for r in _rows(out)) == sorted(ids + own)
    for run_id in ids + own:
        run_dir = out / "runs" / run_id
        assert (run_dir / "result.json").is_file() and (run_dir / "requests.jsonl").is_file()
    board = build_board(out)
    hardware = set(board.runs["hardware"])
    assert len(hardware) == 2 and any(OTHER_CPU in h for h in hardware)
    for group in board.table["group"].unique():
        assert len(set(board.runs.loc[board.runs["group"] == group, "hardware"])) == 1  # never ranked together
    assert set(board.runs.loc[board.runs["hardware"].str.contains(OTHER_CPU), "run_id"]) == set(own) - _failed(b)


def _failed(results: Path) -> set[str]:
    return {r["run_id"] for r in _rows(results) if r["status"] != "ok"}


def test_merging_again_adds_nothing(two_machines, tmp_path):
    a, b, ids, own = two_machines
    out = tmp_path / "merged"
    merge_results(out, [a, b])
    before = (out / "runs.jsonl").read_text()
    report = merge_results(out, [b, a, out])
    assert report.added == () and (out / "runs.jsonl").read_text() == before


def test_same_run_id_with_other_content_is_refused_and_nothing_written(two_machines, tmp_path):
    a, b, ids, _ = two_machines
    path = b / "runs" / ids[0] / "result.json"
    result = json.loads(path.read_text())
    result["provenance"]["host"]["cpu_model"] = OTHER_CPU
    path.write_text(json.dumps(result))
    out = tmp_path / "merged"
    with pytest.raises(MergeError, match=f"run {ids[0]} exists .* rename one run folder"):
        merge_results(out, [a, b])
    assert not out.exists()


def test_other_schema_version_is_refused(two_machines, tmp_path):
    a, b, ids, _ = two_machines
    rows = [{**r, "schema_version": 2} for r in _rows(b)]
    (b / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MergeError, match="schema_version 2 but this harness reads 1"):
        merge_results(tmp_path / "merged", [a, b])
    assert not (tmp_path / "merged").exists()


def test_cli_merges_then_the_leaderboard_reads_the_merged_folder(two_machines, tmp_path):
    a, b, ids, own = two_machines
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "harness.merge", str(out), str(a), str(b)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(ids) + len(own)} runs added, 1 already present" in proc.stdout
    board = subprocess.run([sys.executable, "-m", "harness.leaderboard", "--results", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert board.returncode == 0, board.stderr[-3000:]
    assert OTHER_CPU in (out / "leaderboard" / "leaderboard.md").read_text()
    missing = subprocess.run([sys.executable, "-m", "harness.merge", str(out), str(tmp_path / "nowhere")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "runs.jsonl does not exist" in missing.stderr
