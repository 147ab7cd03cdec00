"""Your own student, teacher and data by import path: validated at the edge, and run by Ray workers
that import them from the files the workflow lists (runtime_env py_modules), not from the package."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lepton_ray.cli import main
from lepton_ray.config import DataConfig, load_workflow
from lepton_ray.data.datasets import build_data
from lepton_ray.trial.teacher import prepare_teachers

from own_code import DATA_MODULE, MODELS_MODULE, TEACHER_FILE, write_project


@pytest.fixture
def project(tmp_path: Path, own_code: Path) -> Path:
    return write_project(tmp_path, own_code)


def test_a_users_student_teacher_state_dict_and_data_factory_pass_validate(project, tmp_path, own_code, capsys):
    assert main(["validate", str(project)]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "not used" not in out
    normalisation = next(line for line in out.splitlines() if line.startswith("model input: "))
    assert "= (raw * 1 - mean[c]) / std[c], mean [" in normalisation, "what a teacher trained elsewhere must be fed"
    assert f"teacher: {own_code / TEACHER_FILE} (your file; its validation accuracy is measured when a sweep starts)" in out

    (tmp_path / "splits").mkdir()
    own_splits = write_project(tmp_path / "splits", own_code, {"data.name": f"{DATA_MODULE}:own_splits"})
    assert main(["validate", str(own_splits)]) == 0
    assert "returned its own DataSplits, so data.seed, data.val_fraction, data.test_fraction and data.label_fraction are not used" in capsys.readouterr().out


def test_a_data_factory_keeps_its_own_test_split_and_gets_a_seeded_stratified_validation_split():
    first, again = (build_data(DataConfig(name=f"{DATA_MODULE}:load", seed=3)) for _ in range(2))
    assert len(first.test) == 300 and len(first.train) + len(first.val) == 1797 - 300
    assert torch.equal(first.val.tensors[1], again.val.tensors[1])
    assert first.input_shape == (1, 8, 8) and first.num_classes == 10
    assert abs(float(first.train.tensors[0].mean())) < 1e-4  # normalised with the training split's own statistics
    assert torch.bincount(first.val.tensors[1], minlength=10).min() >= 20  # stratified: every class in validation


@pytest.mark.parametrize("override,message", [
    ({"student.name": "no_such_module:Net"}, "student.name: no module 'no_such_module'; list its file under user_code"),
    ({"student.name": f"{MODELS_MODULE[:-1]}:TinyNet"}, f"student.name: no module '{MODELS_MODULE[:-1]}'; did you mean '{MODELS_MODULE}' (listed under user_code)?"),
    ({"student.name": f"{MODELS_MODULE}:Nope"}, f"student.name: module '{MODELS_MODULE}' has no 'Nope'"),
    ({"student.name": f"{MODELS_MODULE}:not_a_model", "student.options": {}}, "returned a str, not a torch.nn.Module"),
    ({"student.name": f"{MODELS_MODULE}:raises", "student.options": {}}, "student.name: own_code_models:raises raised RuntimeError: no GPU kernels"),
    ({"student.name": f"{MODELS_MODULE}:three_logits", "student.options": {}}, "maps one image to [1, 3]; it must return logits of shape (N, 10)"),
    ({"student.options": {"depth": 3}}, "student.options: "),
    ({"student.name": f"{MODELS_MODULE}:ViewsFeatures", "student.options": {}, "training.channels_last": True},
     "training.channels_last: the student fails on channels_last weights (view size is not compatible"),
    ({"data.name": f"{DATA_MODULE}:a_list"}, "data.name: own_code_data:a_list returned a list"),
    ({"user_code": ["missing/models.py"]}, "user_code.0: 'missing/models.py' not found"),
    ({"data.name": "synthetic", "data.options": {"num_classes": 9, "image_size": 8}},
     "teacher.checkpoint: the teacher's last layer gives 10 classes, but the data has 9; use a teacher trained on this data's classes"),
    ({"teacher.options": {"width": 16}}, "teacher.checkpoint: the weights do not fit model 'own_code_models:TinyNet' with options {'width': 16}: conv.weight is [32, 1, 3, 3] in the file, [16, 1, 3, 3] in the model"),
])
def test_a_broken_import_path_or_factory_is_one_line_naming_the_field_and_exit_2(tmp_path, own_code, capsys, override, message):
    path = write_project(tmp_path, own_code, override)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_users_teacher_is_measured_at_load_and_one_near_chance_is_flagged(project, tmp_path):
    wf = load_workflow(project)
    data = build_data(wf.data)
    lines: list[str] = []
    (teacher,) = prepare_teachers(wf, data, log=lines.append)
    assert teacher.val_accuracy > 0.8 and teacher.test_accuracy > 0.8 and not any("near chance" in line for line in lines)
    assert any(f"scores {teacher.val_accuracy:.4f} on the validation split" in line for line in lines)

    shuffled = tmp_path / "untrained.pt"
    torch.manual_seed(1)
    torch.save({"model_state_dict": importlib.import_module(MODELS_MODULE).TinyNet((1, 8, 8), 10, width=32).state_dict()}, shuffled)
    lines.clear()
    (untrained,) = prepare_teachers(load_workflow(project, {"teacher.checkpoint": str(shuffled)}), data, log=lines.append)
    assert untrained.val_accuracy < 0.15 and any("near chance" in line for line in lines)


def test_submit_stages_the_users_files_next_to_the_package_and_names_them_there(project, tmp_path, own_code):
    from lepton_ray.cluster.jobs import WORKFLOW_FILE, stage_job

    staging = tmp_path / "staging"
    staging.mkdir()
    stage_job(load_workflow(project), None, staging, [])
    staged = yaml.safe_load((staging / WORKFLOW_FILE).read_text())
    assert staged["user_code"] == [f"{MODELS_MODULE}.py", f"{DATA_MODULE}.py"]
    assert (staging / f"{MODELS_MODULE}.py").read_text() == (own_code / f"{MODELS_MODULE}.py").read_text()


@pytest.mark.ray
def test_a_sweep_with_two_ddp_workers_imports_the_users_code_on_every_worker_then_selects_and_exports(tmp_path, own_code):
    """Run as a user would, from a folder where the user's modules are not importable: only `user_code`
    (the driver) and Ray's py_modules (the workers) can find them. One trial and the pick's labels-only
    control: two DDP worker groups, each importing the user's files."""
    project = write_project(tmp_path, own_code, {"sweep.num_samples": 1})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "lepton_ray.cli", "sweep", str(project)], cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1/1 done (0 failed" in done.stdout and "distillation bought" in done.stdout
    export = tmp_path / "runs" / "own_code" / "sweep" / "export"
    assert (export / "student.int8.onnx").is_file() and "registered models:/own-code-student/1" in done.stdout


def test_the_readme_example_validates_as_written(tmp_path, monkeypatch, capsys):
    """The README's "Your own model and data" files, extracted verbatim, with a state_dict the user trained."""
    import re
    import shutil

    from own_code import train_state_dict
    from lepton_ray.user_code import load_user_code

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    files = dict(re.findall(r"```\w+\n# file: (\S+)\n(.*?)```", readme, flags=re.S))
    assert set(files) == {"my_models.py", "my_data.py", "my_workflow.yaml", "my_images.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "search_spaces").mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml", tmp_path / "search_spaces")
    monkeypatch.chdir(tmp_path)
    load_user_code([Path("my_models.py"), Path("my_data.py")])
    data = build_data(DataConfig(name="my_data:load"))
    torch.save(train_state_dict(data, width=32, module="my_models"), tmp_path / "my_teacher.pt")
    assert main(["validate", "my_workflow.yaml"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "/ 300 test images, 10 classes" in out  # the data set's own test split

    from test_image_folder import write_tree

    write_tree(tmp_path / "images" / "train", {"bag": 12, "coat": 12, "shirt": 12}, size=(8, 8))
    write_tree(tmp_path / "images" / "test", {"bag": 4, "coat": 4, "shirt": 4}, size=(8, 8), seed=1)
    images = build_data(DataConfig(name="imagefolder", root=Path("images/train"), options={"test_root": "images/test"}))
    torch.save(train_state_dict(images, width=32, module="my_models"), tmp_path / "my_image_teacher.pt")
    assert main(["validate", "my_images.yaml"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "30 train / 6 val / 12 test images, 3 classes, input 1x8x8" in out, out


def test_select_loads_user_code_so_a_policy_it_registers_is_known(tmp_path):
    """`select` skips the data and model checks but still imports `user_code` before it looks the policy up."""
    (tmp_path / "my_policies.py").write_text(
        "from lepton_ray.deploy.pareto import POLICIES\nPOLICIES.register('my_knee')(POLICIES.get('knee'))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    base = ["select", str(repo / "workflows/digits_quickstart.yaml"), "--set", f"output_dir={tmp_path / 'runs'}",
            "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "--set", "selection.policy=my_knee"]
    with_code = subprocess.run([sys.executable, "-m", "lepton_ray.cli", *base, "--set", f"user_code=[{tmp_path / 'my_policies.py'}]"],
                               cwd=tmp_path, capture_output=True, text=True)
    assert with_code.returncode == 2 and "output_dir: no sweep under" in with_code.stderr, with_code.stderr
    without = subprocess.run([sys.executable, "-m", "lepton_ray.cli", *base], cwd=tmp_path, capture_output=True, text=True)
    assert without.returncode == 2 and "selection.policy: unknown selection policy 'my_knee'" in without.stderr, without.stderr
