"""benchmarks/searchbench.py on tiny data: the benchmark is an hpo study with QMC points, no pruning, every rung
measured; noise runs repeat measured configurations; the export is a table the simulator loads."""

from __future__ import annotations

import copy
import json

import optuna

from benchmarks import searchbench, searchsim
from hpo.definition.study_file import to_toml
from tests.hpo.studyfiles import TINY_STUDY


def test_a_tiny_benchmark_exports_a_table_the_simulator_loads(tmp_path, tiny_cifar):
    raw = copy.deepcopy(TINY_STUDY)
    raw["budget"].update(epochs=2, train_size=160, rungs=[{"epochs": 1, "train_size": 80}])
    study_file = tmp_path / "quick.toml"
    study_file.write_text(to_toml(raw))
    out = tmp_path / "bench"
    args = ["--data-dir", str(tiny_cifar), "--study-file", str(study_file), "--configs", "2", "--noise-configs", "2",
            "--noise-seeds", "2", "--out", str(out)]
    searchbench.main(args)
    trials = optuna.load_study(study_name="searchbench", storage=f"sqlite:///{out / 'bench.db'}").trials
    assert len(trials) == 4  # the original, the recipe member, 2 Sobol points
    assert trials[1].user_attrs.get("recipe_member") and trials[0].user_attrs.get("seed_baseline")
    assert all(len(t.user_attrs["rungs"]) == 1 and len(t.user_attrs["curve"]) == 2 for t in trials)  # no pruning
    table = searchsim.load_table(out / "table.json")
    assert {f.name for f in table.fidelities} == {"r0", "full"} and len(table.configs) == 4
    raw_table = json.loads((out / "table.json").read_text())
    assert [len(n["full"]) for n in raw_table["noise"]] == [2, 2] and [len(n["r0"]) for n in raw_table["noise"]] == [2, 2]
    searchbench.main(args)  # everything measured: nothing runs again
    assert len(optuna.load_study(study_name="searchbench", storage=f"sqlite:///{out / 'bench.db'}").trials) == 4
