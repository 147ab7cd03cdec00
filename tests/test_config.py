"""Workflow and search-space validation: every bad input is one line naming the field, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lepton_ray.cli import main
from lepton_ray.config import apply_overrides, load_workflow
from lepton_ray.search_space import parse_search_space
from lepton_ray.data.datasets import build_data
from lepton_ray.errors import ConfigError

from conftest import QUICKSTART, REPO

BAD_WORKFLOWS = [
    ({"foo": 1}, "foo: unknown key"),
    ({"data.name": "digitz"}, "data.name: unknown data set 'digitz'; did you mean 'digits'"),
    ({"student.name": "resnet9000"}, "student.name: unknown model"),
    ({"teacher.name": "nope"}, "teacher.name: unknown model"),
    ({"distillation.alpha": 1.5}, "distillation.alpha"),
    ({"distillation.temperature": 0}, "distillation.temperature"),
    ({"distillation.temperature": -1.0}, "distillation.temperature"),
    ({"training.epochs": 0}, "training.epochs"),
    ({"training.lr": "fast"}, "training.lr"),
    ({"training.optimizer": "adagrad"}, "training.optimizer"),
    ({"training.precision": "fp16"}, "training.precision: fp16 needs a GPU"),
    ({"compression.quantization.bits": 3}, "compression.quantization.bits"),
    ({"compression.quantization.bits": 16}, "compression.quantization.bits"),
    ({"compression.pruning.sparsity": 0.99}, "compression.pruning.sparsity"),
    ({"compression.pruning.end_epoch": 100}, "compression.pruning.end_epoch"),
    ({"compression.quantization.start_epoch": 100}, "compression.quantization.start_epoch"),
    ({"compression.channel_pruning.sparsity": -0.1}, "compression.channel_pruning.sparsity"),
    ({"compression.low_rank.rank_ratio": 2.0}, "compression.low_rank.rank_ratio"),
    ({"teacher.train": None, "teacher.checkpoint": "/nonexistent/teacher.pt"}, "teacher.checkpoint: file '/nonexistent/teacher.pt' not found"),
    ({"teacher.train": None, "teacher.checkpoint": None}, "teacher: set 'checkpoint'"),
    ({"sweep.space": "/nonexistent/space.yaml"}, "sweep.space: file"),
    ({"sweep.cost_metric": "flops"}, "sweep.cost_metric"),
    ({"sweep.num_samples": 0}, "sweep.num_samples"),
    ({"resources.num_workers": 8}, "resources.num_workers: 8 workers"),
    ({"resources.cpus_per_worker": 0}, "resources.cpus_per_worker"),
    ({"distillation.losses.0.name": "kdd"}, "distillation.losses.0.name: unknown distillation loss 'kdd'"),
    ({"distillation.losses": []}, "distillation.losses"),
    ({"data.name": "cifar10", "data.root": "/nonexistent/cifar"}, "data.root"),
    ({"data.name": "imagefolder", "data.root": "/nonexistent/images"}, "data.root"),
    ({"data.options": {"zoom": 2}}, "data.options.zoom"),
    ({"student.options": {"no_such_option": 3}}, "student.options"),
    ({"tracking.experiment": ""}, "tracking.experiment"),
    ({"name": "bad name!"}, "name"),
    ({"selection.policy": "best"}, "selection.policy"),
    ({"data.val_fraction": 0.7}, "data.val_fraction"),
]


@pytest.mark.parametrize("overrides,expected", BAD_WORKFLOWS, ids=[e for _, e in BAD_WORKFLOWS])
def test_bad_workflow_exits_2_with_one_line_naming_the_field(overrides, expected, write_workflow, teacher_checkpoint, capsys, tmp_path):
    path = write_workflow({"teacher.checkpoint": str(teacher_checkpoint), **overrides})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("lepton-ray: error: ")
    assert expected in err, err
    assert not (tmp_path / "mlflow.db").exists()


BAD_SPACES = [
    ({"params": {}}, "search_space.params"),
    ({"params": {"compression.quantization.bits": {"type": "categorical", "choices": [3, 8]}}}, "search_space.params.compression.quantization.bits: value 3"),
    ({"params": {"training.foo": {"type": "float", "low": 0.1, "high": 0.2}}}, "search_space.params.training.foo"),
    ({"params": {"distillation.alpha": {"type": "float", "low": 0.9, "high": 0.1}}}, "search_space.params.distillation.alpha"),
    ({"params": {"distillation.alpha": {"type": "normal", "mean": 0.5}}}, "search_space.params.distillation.alpha"),
    ({"params": {"distillation.alpha": {"type": "float", "low": 0.0, "high": 1.5}}}, "search_space.params.distillation.alpha: value 1.5"),
    ({"params": {"training.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "search_space.params.training.lr"),
    ({"params": {"distillation.temperature": {"type": "categorical", "choices": []}}}, "search_space.params.distillation.temperature"),
]


@pytest.mark.parametrize("space,expected", BAD_SPACES, ids=[e for _, e in BAD_SPACES])
def test_bad_search_space_exits_2_naming_the_knob(space, expected, write_workflow, teacher_checkpoint, capsys, tmp_path):
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(space))
    path = write_workflow({"teacher.checkpoint": str(teacher_checkpoint), "sweep.space": str(space_path)})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err


BAD_FILES = [
    ("name: x\nteacher: !!python/object/apply:os.system ['touch /tmp/lepton_pwned']\n", "not valid plain YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("name: [unclosed\n", "not valid plain YAML"),
]


@pytest.mark.parametrize("text,expected", BAD_FILES, ids=["python-tag", "list", "syntax"])
def test_unsafe_or_malformed_yaml_is_refused_and_nothing_runs(text, expected, tmp_path, capsys):
    marker = Path("/tmp/lepton_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert expected in capsys.readouterr().err
    assert not marker.exists()


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "workflow: file" in capsys.readouterr().err
    assert main(["validate", str(QUICKSTART), "--set", "training.epochs"]) == 2
    assert "--set: expected KEY=VALUE" in capsys.readouterr().err
    assert main(["train", str(QUICKSTART), "--no-such-flag"]) == 2
    assert capsys.readouterr().err.strip() == "lepton-ray: error: unrecognized arguments: --no-such-flag (see `lepton-ray --help`)"


def test_quickstart_resolves_with_defaults_filled_in():
    wf = load_workflow(QUICKSTART)
    assert wf.data.name == "digits"
    assert wf.resources.num_workers == 2
    assert wf.distillation.losses[0].name == "kd"
    assert wf.compression.quantization.bits is None
    with pytest.raises(Exception):
        wf.training.epochs = 3  # frozen after parsing


def test_set_overrides_reach_nested_fields_and_list_items():
    wf = load_workflow(QUICKSTART, {"training.epochs": 3, "distillation.losses.0.weight": 0.5, "compression.quantization.bits": 4})
    assert (wf.training.epochs, wf.distillation.losses[0].weight, wf.compression.quantization.bits) == (3, 0.5, 4)
    with pytest.raises(ConfigError, match="distillation.losses.5"):
        apply_overrides({"distillation": {"losses": [{}]}}, {"distillation.losses.5.name": "kd"})


def test_validate_prints_the_resolved_config_and_the_size_of_each_data_split(capsys, write_workflow, teacher_checkpoint):
    path = write_workflow({"teacher.checkpoint": str(teacher_checkpoint)})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("ok:")[0])
    assert resolved["workflow"]["training"]["optimizer"] == "adam"
    assert "distillation.temperature" in resolved["search_space"]["params"]
    data = build_data(load_workflow(path).data)
    assert (len(data.train), len(data.val), len(data.test)) == (1167, 270, 360)
    assert "\ndata: digits, 1167 train / 270 val / 360 test images, 10 classes, input 1x8x8 (channels x height x width)\n" in out
    assert "\nmodel input: Input `input`: float32 NCHW (N, 1, 8, 8) = (raw * 0.0625 - mean[c]) / std[c]" in out and "\nteacher: " in out


def test_every_shipped_workflow_and_search_space_parses():
    """No shipped config may rot (schema level; the CLI test checks files and registries)."""
    for path in sorted((REPO / "search_spaces").glob("*.yaml")):
        parse_search_space(yaml.safe_load(path.read_text()))
    workflows = sorted((REPO / "workflows").glob("*.yaml"))
    assert workflows
    for path in workflows:
        load_workflow(path)


def test_trials_time_their_int8_file_only_when_the_sweep_minimises_a_latency_or_the_workflow_asks():
    from lepton_ray import metrics
    from lepton_ray.config import ExportConfig

    unset = ExportConfig()
    assert [unset.times_trials(cost) for cost in (metrics.INT8_GZIP_BYTES, metrics.SIZE_BYTES, metrics.LATENCY_MS, metrics.LATENCY_BATCH_MS)] == [False, False, True, True]
    assert ExportConfig(trial_latency=True).times_trials(metrics.INT8_GZIP_BYTES)
    assert not ExportConfig(trial_latency=False).times_trials(metrics.LATENCY_MS)


def test_a_latency_cost_with_trial_timing_off_is_refused_naming_both_fields():
    with pytest.raises(ConfigError, match=r"export.trial_latency: must be unset or true when sweep.cost_metric is a latency \(latency_ms\)"):
        load_workflow(QUICKSTART, {"sweep.cost_metric": "latency_ms", "export.trial_latency": False})
