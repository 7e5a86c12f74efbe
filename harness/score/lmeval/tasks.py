"""Finds lm-eval tasks by name, refuses the ones chat completions cannot score, applies overrides."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "task_files"
GENERATIVE = "generate_until"
# lm-eval's default when a task YAML names no output_type (lm_eval.config.task.TaskConfig).
DEFAULT_OUTPUT_TYPE = "generate_until"
# A YAML line declaring a name: "task: x", "group: x" or "tag: x" at the start of a line.
_NAME_LINE = re.compile(r"^(?:task|group|tag):[ \t]*['\"]?([^\s'\"#]+)", re.M)


class LmEvalTaskError(ConfigError):
    """An lm-eval task that does not exist, or that the chat-completions engine cannot score."""


def builtin_tasks_dir() -> Path:
    """lm-eval's own task folder, found without importing lm_eval."""
    spec = find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LmEvalTaskError("quality.engine=lm_eval needs lm-eval: run `bash scripts/install.sh` "
                              "(it installs requirements/eval.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def task_dirs(names: Iterable[str]) -> list[Path] | None:
    """Folders whose YAML files declare each of ``names``; None when a name is not found so.

    A plain text scan of lm-eval's ~14,000 task YAMLs takes about a second, where lm-eval's
    own index (which parses each) took about a minute on this 2-core machine; TaskManager
    then indexes only these folders (recursively), which hold each group's member tasks.
    """
    wanted = set(names)
    found: dict[str, set[Path]] = {}
    for root in (builtin_tasks_dir(), TASKS_DIR):
        for path in root.rglob("*.yaml"):
            for name in _NAME_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
                if name in wanted:
                    found.setdefault(name, set()).add(path.parent)
    if set(found) != wanted:
        return None
    return sorted({d for dirs in found.values() for d in dirs} - {TASKS_DIR})


def task_manager(names: Sequence[str]):
    """An lm-eval TaskManager that knows ``names`` (and the repo's tasks in harness/score/lmeval/task_files)."""
    from lm_eval.tasks import TaskManager

    dirs = task_dirs(names)
    if dirs is None:  # a name the scan could not place (e.g. a tag listed in YAML list form)
        return TaskManager(include_path=str(TASKS_DIR))
    # The repo's folder comes last so that its tasks win over built-in ones of the same name.
    return TaskManager(include_path=[*map(str, dirs), str(TASKS_DIR)], include_defaults=False)


def check_tasks(names: Sequence[str], manager=None) -> None:
    """Refuses unknown tasks and tasks scored by log-likelihood, before any server starts.

    Raises:
        LmEvalTaskError: a name lm-eval does not know (with close names), or a task whose
            output_type needs log-likelihoods, which chat completions do not return.
    """
    manager = manager or task_manager(names)
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5)
            raise LmEvalTaskError(f"lm-eval has no task or group named {name!r}"
                                  + (f"; close names: {', '.join(close)}" if close else ""))
        for leaf, output_type in _leaf_output_types(manager.task_index, entry, set()):
            if output_type != GENERATIVE:
                raise LmEvalTaskError(
                    f"lm-eval task {leaf} (in {name}) is scored by log-likelihood (output_type {output_type}), "
                    "which the chat-completions API of the served model does not return: choose generative "
                    "tasks (e.g. gsm8k, chartqa, mmmu_val) or quality.engine=harness")


def _leaf_output_types(index: Mapping[str, Any], entry, seen: set[str]) -> list[tuple[str, str]]:
    """(task name, output_type) of every task under ``entry`` (itself, a group's or a tag's members)."""
    from lm_eval.tasks._index import Kind

    if entry.name in seen:
        return []
    seen.add(entry.name)
    cfg = entry.cfg or {}
    if entry.kind is Kind.TASK:
        return [(entry.name, cfg.get("output_type", DEFAULT_OUTPUT_TYPE))]
    if entry.kind is Kind.TAG:
        members = [e for e in index.values() if entry.name in e.tags]
    elif entry.kind is Kind.GROUP:
        members = []
        for item in cfg.get("task", []):
            name = item.get("task") if isinstance(item, Mapping) else item
            if isinstance(name, str) and name in index:
                members.append(index[name])
            elif isinstance(item, Mapping):  # an inline task defined inside the group
                members.append(type(entry)(name=str(name), kind=Kind.TASK, yaml_path=None, cfg=dict(item)))
    else:  # a Python-defined task: its output type is known only once built
        return []
    return [pair for member in members for pair in _leaf_output_types(index, member, seen)]


def task_specs(manager, names: Sequence[str], overrides: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """What lm-eval's ``simple_evaluate(tasks=...)`` takes: a name, or a full config with overrides.

    A task with overrides is loaded from its YAML (includes and ``!function`` resolved) and
    the given keys replace the YAML's, e.g. ``dataset_path`` to read a local copy.

    Raises:
        LmEvalTaskError: overrides for a group or tag (override its member tasks by name).
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    specs: list[Any] = []
    for name in names:
        extra = overrides.get(name)
        if not extra:
            specs.append(name)
            continue
        entry = manager.task_index[name]
        if entry.kind is not Kind.TASK or entry.yaml_path is None:
            raise LmEvalTaskError(f"quality.lm_eval.task_overrides.{name}: {name} is not a single YAML task; "
                                  "override each of its member tasks by name instead")
        specs.append({**load_yaml(entry.yaml_path, resolve_func=True), **dict(extra), "task": name})
    return specs
