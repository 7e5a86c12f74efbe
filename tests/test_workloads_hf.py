"""Hugging Face workloads load from local copies in each task's own format; mistakes fail early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.schema import ConfigError, compose
from harness.replay.workloads import load_workload
from tests.hf_tasks import CHARTQA_ROWS, TASKS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict]]]:
    root = tmp_path_factory.mktemp("hf-tasks")
    return {name: build(root / name) for name, build in TASKS.items()}


def _workload(task: str, path, *overrides: str):
    return compose([f"workload={task}", f"workload.path={path}", *overrides]).workload


@pytest.mark.parametrize("task", ["chartqa", "docvqa", "textvqa", "coco_captions"])
def test_every_row_becomes_a_sample_with_its_own_references(local, task) -> None:
    path, rows = local[task]
    samples = load_workload(_workload(task, path, "workload.limit=50"))
    assert len(samples) == len(rows) and len({s.id for s in samples}) == len(rows)
    answer_column = compose([f"workload={task}"]).workload.columns["answer"]
    by_refs = {tuple(r[answer_column]): r for r in rows}
    for sample in samples:
        row = by_refs[sample.references]  # the sample carries exactly one row's answers, all of them
        assert sample.reference == row[answer_column][0]
        assert sample.image.mode == "RGB" and sample.image.size == row["image"].size
        assert sample.task == task
    if task != "coco_captions":  # captioning has no question; the others put it in the prompt
        question = compose([f"workload={task}"]).workload.columns["question"]
        assert all(by_refs[s.references][question] in s.prompt for s in samples)


def test_dataset_ids_are_kept(local) -> None:
    path, rows = local["docvqa"]
    assert {s.id for s in load_workload(_workload("docvqa", path))} == {r["questionId"] for r in rows}


def test_subsample_is_seeded_stable_and_extends_with_the_limit(local) -> None:
    path, _ = local["chartqa"]
    ids = lambda *o: [s.id for s in load_workload(_workload("chartqa", path, *o))]  # noqa: E731
    four = ids("workload.limit=4")
    assert four == ids("workload.limit=4")  # the same items every run
    assert ids("workload.limit=2") == four[:2]  # a larger limit extends a smaller one
    assert ids("workload.limit=2", "workload.offset=2") == four[2:4]  # offset pages through the order
    assert ids("workload.limit=6", "workload.seed=1") != ids("workload.limit=6")
    assert sorted(ids("workload.limit=6")) == [f"test-{i:06d}" for i in range(len(CHARTQA_ROWS))]


def test_mmmu_keeps_single_image_multiple_choice_with_lettered_options(local) -> None:
    path, _ = local["mmmu"]
    samples = {s.id: s for s in load_workload(_workload("mmmu", path))}
    assert set(samples) == {"validation_Art_1", "validation_Math_2", "validation_Physics_3"}
    art = samples["validation_Art_1"]
    assert "A. Baroque\nB. Cubism\nC. Impressionism" in art.prompt
    assert "<image" not in art.prompt and "shown in the image" in art.prompt
    assert art.references == ("B",)


def test_images_shrink_to_the_max_side_keeping_their_aspect(local) -> None:
    path, rows = local["docvqa"]
    assert rows[0]["image"].size == (400, 520)
    samples = load_workload(_workload("docvqa", path, "workload.image_max_side_px=260"))
    assert {s.image.size for s in samples} == {(200, 260)}


def test_synthetic_images_shrink_too_and_keep_their_answers() -> None:
    plain = load_workload(compose(["workload.limit=4"]).workload)
    small = load_workload(compose(["workload.limit=4", "workload.image_max_side_px=96"]).workload)
    assert {s.image.size for s in plain} == {(192, 192)} and {s.image.size for s in small} == {(96, 96)}
    assert [(s.id, s.reference) for s in small] == [(s.id, s.reference) for s in plain]


def test_a_missing_column_names_the_columns_and_the_fix(local) -> None:
    path, _ = local["chartqa"]
    with pytest.raises(ConfigError, match=r"'question'.*not in.*'query'.*set workload.columns"):
        load_workload(_workload("chartqa", path, "workload.columns.question=question"))


def test_an_unknown_split_lists_the_splits(local) -> None:
    path, _ = local["docvqa"]
    with pytest.raises(ConfigError, match=r"'test' is not in.*\['validation'\]"):
        load_workload(_workload("docvqa", path, "workload.split=test"))


def test_a_path_that_does_not_exist_says_what_to_point_at(tmp_path) -> None:
    with pytest.raises(ConfigError, match="matches no file or folder"):
        load_workload(_workload("chartqa", tmp_path / "nowhere.parquet"))


@pytest.mark.parametrize("override,message", [
    ("workload.metric=bleu", "workload.metric='bleu' is unknown"),
    ("workload.prompt='{question} {answer}'", r"uses \['answer'\]"),
    ("~workload.columns.answer", "workload.columns.answer is required"),
    ("workload.offset=-1", "workload.offset must be >= 0"),
])
def test_config_mistakes_fail_at_compose_time(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(["workload=chartqa", override])


def test_the_synthetic_suite_refuses_a_dataset_split() -> None:
    with pytest.raises(ConfigError, match="synthetic suite has splits train, test"):
        compose(["workload.split=validation"])


def test_a_hub_dataset_missing_offline_asks_for_a_local_path(tmp_path) -> None:
    code = ("from harness.config.schema import compose; from harness.replay.workloads import load_workload\n"
            "load_workload(compose(['workload=mmmu']).workload)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and "not in the local hub cache; pass workload.path=LOCAL_DIR" in proc.stderr


def test_a_budget_sweep_is_one_multirun_of_three_configs() -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.serve.vllm import vllm_args

    line = ["+variant=bf16", "workload=chartqa", "serve.max_soft_tokens=70,140,280"]
    [jobs] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(line), max_batch_size=None)
    runs = [compose(job) for job in jobs]
    assert [r.serve.max_soft_tokens for r in runs] == [70, 140, 280]
    assert all(r.workload == runs[0].workload for r in runs) and runs[0].workload.name == "chartqa"
    budgets = [vllm_args("m", r.serve, served_model_name="m")["mm-processor-kwargs"] for r in runs]
    assert budgets == [{"max_soft_tokens": b} for b in (70, 140, 280)]
