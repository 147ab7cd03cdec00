"""The in-process session: the one trial loop without Ray, its checkpoints, and resuming from them."""

from __future__ import annotations

import pytest
import torch

from lepton_ray import metrics
from lepton_ray.config import ModelSpec, load_workflow
from lepton_ray.errors import StorageFullError
from lepton_ray.data.datasets import build_data
from lepton_ray.models.zoo import build_model
from lepton_ray.trial.sessions import CHECKPOINT_PATH_KEY, CHECKPOINTS_KEPT, InProcessSession
from lepton_ray.models.saved import model_payload
from lepton_ray.trial.files import STUDENT_FILE, TRIAL_STATE_FILE
from lepton_ray.trial.loop import run_trial

from conftest import QUICKSTART
from test_sweep import TINY

CPU = torch.device("cpu")


class Interrupted(Exception):
    pass


def _loop_config(epochs: int) -> dict:
    wf = load_workflow(QUICKSTART, {**TINY, "training.epochs": epochs, "resources.num_workers": 1})
    data = build_data(wf.data)
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(name="cnn_small", options={"channels": [16, 32]}), data.input_shape, data.num_classes)
    return {"workflow": wf.to_dict(), "teachers": [model_payload(teacher, "cnn_small", {"channels": [16, 32]}, data)], "data": data, "teacher_cache": None}


def test_in_process_trial_reports_every_epoch_and_keeps_the_two_newest_checkpoints(tmp_path):
    reports = []
    session = InProcessSession(tmp_path / "trial-0000", reports.append, CPU)
    run_trial(_loop_config(epochs=4), session)
    assert [r[metrics.EPOCH] for r in reports] == [1, 2, 3, 4]
    assert metrics.TEST_ACCURACY in reports[-1] and reports[-1][metrics.RESTARTS] == 0
    assert reports[-1][metrics.COMPUTE_S] > 0 and reports[-1][metrics.SETUP_S] > 0
    kept = sorted(p.name for p in (tmp_path / "trial-0000").iterdir())
    assert len(kept) == CHECKPOINTS_KEPT and all(name.startswith("checkpoint_") for name in kept)
    assert (tmp_path / "trial-0000" / kept[-1] / STUDENT_FILE).is_file()
    assert reports[-1][CHECKPOINT_PATH_KEY].endswith(kept[-1])


def _interrupt_after_epoch(folder, epoch: int) -> None:
    """Run a 4-epoch trial that dies right after epoch `epoch` was reported (its checkpoint is on disk)."""

    def crash(report: dict) -> None:
        if report[metrics.EPOCH] == epoch:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(_loop_config(epochs=4), InProcessSession(folder, crash, CPU))


def test_interrupted_in_process_trial_resumes_from_its_last_checkpoint_without_redoing_epochs(tmp_path):
    _interrupt_after_epoch(tmp_path, 2)
    reports = []
    run_trial(_loop_config(epochs=4), InProcessSession(tmp_path, reports.append, CPU))
    assert [r[metrics.EPOCH] for r in reports] == [3, 4]
    assert all(r[metrics.RESTARTS] == 1 for r in reports)
    assert metrics.TEST_ACCURACY in reports[-1]


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    _interrupt_after_epoch(tmp_path, 3)
    newest = sorted(tmp_path.iterdir())[-1] / TRIAL_STATE_FILE
    newest.write_bytes(newest.read_bytes()[:64])
    reports = []
    run_trial(_loop_config(epochs=4), InProcessSession(tmp_path, reports.append, CPU))
    assert [r[metrics.EPOCH] for r in reports] == [3, 4]


def test_disk_full_during_a_checkpoint_stops_the_trial_cleanly_and_it_resumes_once_space_is_freed(tmp_path, monkeypatch):
    import lepton_ray.checkpoints as checkpoints

    real_save = torch.save
    written = []

    def fills_up_at_the_third_checkpoint(obj, path, *args, **kwargs):
        if len(written) >= 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", fills_up_at_the_third_checkpoint)
    with pytest.raises(StorageFullError, match="--resume"):
        run_trial(_loop_config(epochs=4), InProcessSession(tmp_path, lambda _: None, CPU))
    assert sorted(p.name.startswith("checkpoint_") for p in tmp_path.iterdir()) == [True, True], "no staging folder or partial checkpoint left"
    monkeypatch.setattr(checkpoints.torch, "save", real_save)  # space freed
    reports = []
    run_trial(_loop_config(epochs=4), InProcessSession(tmp_path, reports.append, CPU))
    assert [r[metrics.EPOCH] for r in reports] == [3, 4] and metrics.TEST_ACCURACY in reports[-1]


def test_bf16_mixed_precision_trial_trains_under_autocast_and_ships_fp32_weights(tmp_path):
    config = _loop_config(epochs=3)
    config["workflow"]["training"]["precision"] = "bf16"
    reports = []
    run_trial(config, InProcessSession(tmp_path, reports.append, CPU))
    assert all(torch.isfinite(torch.tensor(r[metrics.TRAIN_LOSS])) for r in reports)
    assert reports[-1][metrics.TEST_ACCURACY] > 0.2, "a 10-class student learnt something under bf16 autocast"
    student = torch.load(sorted(tmp_path.iterdir())[-1] / STUDENT_FILE, weights_only=True)["state_dict"]
    assert {value.dtype for value in student.values() if value.is_floating_point()} == {torch.float32}


@pytest.fixture(scope="module", params=[None, 4], ids=["float", "4bit"])
def measured_trial(request, tmp_path_factory):
    """A finished trial (float or 4-bit QAT), its final report, and a copy of the int8 file it exported and measured."""
    import shutil

    import lepton_ray.export.int8 as int8

    folder = tmp_path_factory.mktemp("measured")
    real_export = int8.export_int8
    exported = []

    def keep_a_copy(*args, **kwargs):
        files = real_export(*args, **kwargs)
        exported.append(shutil.copy(files.int8, folder / f"exported-{len(exported)}.onnx"))
        return files

    config = _loop_config(epochs=2)
    config["workflow"]["compression"]["quantization"]["bits"] = request.param
    config["workflow"]["export"]["trial_latency"] = True  # the latency figures below: timed in the trial when asked for
    reports = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8, "export_int8", keep_a_copy)
        run_trial(config, InProcessSession(folder / "trial", reports.append, CPU))
    assert len(exported) == 1, "one export per finished trial"
    return config, reports[-1], exported[0]


def test_a_trials_int8_file_bytes_equal_the_size_of_the_file_it_exports(measured_trial):
    import gzip
    from pathlib import Path

    _, report, int8_file = measured_trial
    assert report[metrics.INT8_FILE_BYTES] == Path(int8_file).stat().st_size
    assert report[metrics.INT8_GZIP_BYTES] == len(gzip.compress(Path(int8_file).read_bytes(), compresslevel=9, mtime=0))


def test_a_trials_int8_val_accuracy_equals_an_independent_ort_evaluation_of_its_file_on_the_val_split(measured_trial):
    import onnxruntime as ort

    config, report, int8_file = measured_trial
    images, labels = config["data"].val.tensors
    session = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert report[metrics.INT8_VAL_ACCURACY] == pytest.approx(float((logits.argmax(axis=1) == labels.numpy()).mean()), abs=1e-12)


def test_a_trials_latency_figures_and_their_spreads_are_positive_and_finite(measured_trial):
    import math

    _, report, _ = measured_trial
    for name in (metrics.LATENCY_MS, metrics.LATENCY_IQR_MS, metrics.LATENCY_BATCH_MS, metrics.LATENCY_BATCH_IQR_MS):
        assert 0 < report[name] < 1000 and math.isfinite(report[name]), name


def test_a_trials_reported_test_accuracy_is_that_of_the_student_file_it_saves(measured_trial):
    """The reported figure is measured on the finalized student (baked weights, BatchNorm re-estimated),
    which is what `student.pt` holds and the publish step exports."""
    from pathlib import Path

    from lepton_ray.checkpoints import load_safe
    from lepton_ray.config import parse_workflow
    from lepton_ray.trial.epoch import evaluate
    from lepton_ray.trial.files import load_student, newest_student_file

    config, report, int8_file = measured_trial
    payload = load_safe(newest_student_file(Path(int8_file).parent / "trial"), "student")
    student = load_student(parse_workflow(payload["workflow"]), payload)
    accuracy, _ = evaluate(student, config["data"].test, 256, CPU)
    assert report[metrics.TEST_ACCURACY] == accuracy == payload["metrics"][metrics.TEST_ACCURACY]


def test_a_trial_keeps_the_estimates_next_to_the_measured_figures(measured_trial):
    config, report, _ = measured_trial
    assert set(metrics.ESTIMATES) <= set(report)
    assert report[metrics.BITS] == (config["workflow"]["compression"]["quantization"]["bits"] or 32)


def test_a_teacher_cache_too_big_for_the_object_store_is_read_from_its_file_and_matches_the_live_teacher(tmp_path):
    """The sweep hands trials a path instead of a ref above `sweep.teacher_cache_object_store_mb`."""
    from lepton_ray.config import parse_workflow
    from lepton_ray.distill.teacher_cache import build_teacher_cache
    from lepton_ray.models.saved import load_teacher_module

    live, cached = [], []
    config = _loop_config(epochs=2)
    teacher = load_teacher_module(config["teachers"][0])
    cache = build_teacher_cache([teacher], config["data"].train, (), parse_workflow(config["workflow"]).data, key="k")
    cache.save(tmp_path / "cache.pt")
    run_trial(config, InProcessSession(tmp_path / "live", live.append, CPU))
    run_trial({**config, "teacher_cache": str(tmp_path / "cache.pt")}, InProcessSession(tmp_path / "cached", cached.append, CPU))
    assert [r[metrics.TRAIN_LOSS] for r in cached] == pytest.approx([r[metrics.TRAIN_LOSS] for r in live], rel=1e-5)
    assert cached[-1][metrics.TEST_ACCURACY] == pytest.approx(live[-1][metrics.TEST_ACCURACY])
