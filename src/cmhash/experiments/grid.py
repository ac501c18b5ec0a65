"""The grid: every (dataset, method, scenario, bits, seed) cell a config names, each with a key.

A cell's key is a hash of its full spec (dataset, method with hyper-parameters, bits, seed,
scenario, evaluation settings), so a finished cell is recognised in the results store whatever
config it came from, and any change to the spec makes a new cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from cmhash.experiments.config import SCENARIO_AXES, DatasetSpec, EvaluationSpec, ExperimentConfig, MethodSpec

KEY_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One run: train ``method`` on ``dataset`` under ``scenario`` at ``bits`` with ``seed``."""

    dataset: DatasetSpec
    method: MethodSpec
    bits: int
    seed: int
    scenario: tuple[tuple[str, Any], ...]          # non-clean axes only, in SCENARIO_AXES order
    scenario_params: tuple[tuple[str, Any], ...]   # fixed parameters of the non-clean axes
    evaluation: EvaluationSpec

    def spec(self) -> dict[str, Any]:
        """The JSON-ready spec the key hashes (and that the record stores)."""
        return {
            "key_version": KEY_VERSION,
            "dataset": self.dataset.as_dict(),
            "method": {k: v for k, v in self.method.as_dict().items() if k != "label"},
            "bits": self.bits,
            "seed": self.seed,
            "scenario": dict(self.scenario),
            "scenario_params": {k: dict(v) for k, v in self.scenario_params},
            "evaluation": self.evaluation.as_dict(),
        }

    @property
    def key(self) -> str:
        text = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def scenario_dict(self) -> dict[str, Any]:
        """Every axis with its value here (clean values for axes the cell does not vary)."""
        return {**SCENARIO_AXES, **dict(self.scenario)}

    def describe(self) -> str:
        scen = ", ".join(f"{k}={v}" for k, v in self.scenario) or "clean"
        return f"{self.method.label} {self.bits}b seed {self.seed} on {self.dataset.label} ({scen})"


def expand(config: ExperimentConfig) -> list[Cell]:
    """All cells of ``config``, in a stable order: dataset, scenario, method, bits, seed.

    Two method entries with the same spec under different labels give cells with the same key
    (run once, shown under both labels).
    """
    axes = [(a.name, a.values, a.params) for a in config.scenarios]
    combos = list(itertools.product(*[values for _, values, _ in axes])) or [()]
    cells: list[Cell] = []
    for dataset in config.datasets:
        for combo in combos:
            scenario = tuple(
                (name, value) for (name, _, _), value in zip(axes, combo) if value != SCENARIO_AXES[name]
            )
            params = tuple(
                (name, tuple(sorted(p.items()))) for (name, _, p), value in zip(axes, combo)
                if value != SCENARIO_AXES[name] and p
            )
            for method in config.methods:
                for bits in method.bits or config.bits:
                    for seed in config.seeds:
                        cells.append(Cell(dataset, method, bits, seed, scenario, params, config.evaluation))
    return cells
