"""A lineage: the ordered training runs that made a model, as one file of data.

A lineage file lists `steps`, in the order they run. Each step has a `name`, the config it
`extends` (an earlier step's name, or a config file relative to the lineage file) and the settings
it changes (`set:`, merged over the base as an `extends:` file's keys are). A step with
`parallel: true` starts together with the step before it, so it must not read that step's model.

    lion-train --lineage nano-lineage.yaml --plan          # the steps, one line per group
    lion-train --lineage nano-lineage.yaml --step stage1   # train one of them
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, _merge, apply_override, read_config_file

STEP_KEYS = {"name", "extends", "set", "parallel"}


@dataclass(frozen=True)
class Step:
    name: str
    sections: dict[str, Any]  # the step's whole config, before command-line overrides
    parallel: bool = False

    def config(self, overrides: Sequence[str] = ()) -> TrainConfig:
        data = copy.deepcopy(self.sections)  # the overrides change their copy, not the step
        for item in overrides:
            apply_override(data, item)
        return TrainConfig.from_dict(data)


def load_lineage(path: str | Path) -> list[Step]:
    """The steps of a lineage file, each resolved to its whole config, in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lineage {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ValueError(f"lineage {path} must be a mapping with a non-empty list of steps")
    steps: dict[str, Step] = {}
    for number, entry in enumerate(data["steps"], 1):
        where = f"{path}, step {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a step is a mapping with name, extends and set")
        unknown = set(entry) - STEP_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (a step has {sorted(STEP_KEYS)})")
        name, base, changes = entry.get("name"), entry.get("extends"), entry.get("set", {})
        parallel = entry.get("parallel", False)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
        if name in steps:
            raise ValueError(f"{where}: step {name!r} is named twice")
        if not isinstance(base, str) or not base:
            raise ValueError(f"{where} ({name}): extends must name an earlier step or a config file, got {base!r}")
        if not isinstance(changes, dict):
            raise ValueError(f"{where} ({name}): set must be a mapping of sections, got {changes!r}")
        if not isinstance(parallel, bool) or (parallel and not steps):
            raise ValueError(f"{where} ({name}): parallel is true or false, and the first step runs alone")
        if base in steps:
            sections = steps[base].sections
        else:
            base_path = path.parent / base
            if not base_path.is_file():
                raise ValueError(f"{where} ({name}): extends {base!r}, which is neither an earlier step "
                                 f"({', '.join(steps) or 'none yet'}) nor a file next to the lineage")
            sections = read_config_file(base_path)
        steps[name] = Step(name, _merge(sections, changes), parallel)
        try:
            steps[name].config()
        except (TypeError, ValueError) as error:  # fail here, naming the step, not when it is trained
            raise ValueError(f"{where} ({name}): {error}") from error
    return list(steps.values())


def plan(steps: Sequence[Step]) -> list[list[str]]:
    """The step names in groups that run side by side, the groups in order."""
    groups: list[list[str]] = []
    for step in steps:
        if step.parallel:
            groups[-1].append(step.name)
        else:
            groups.append([step.name])
    return groups


def find_step(steps: Sequence[Step], name: str) -> Step:
    for step in steps:
        if step.name == name:
            return step
    raise ValueError(f"no step {name!r} in the lineage (it has {', '.join(s.name for s in steps)})")
