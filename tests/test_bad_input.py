"""Bad input corpus: every case goes through the real `train` or `sweep` command and must exit 2
with one line naming the field, before anything costs: no teacher trained, no MLflow store or run,
no Ray cluster, no sweep folder. Also the GPU arithmetic of the resource check."""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from lepton_ray.checks import check_resources
from lepton_ray.cli import main
from lepton_ray.config import load_workflow
from lepton_ray.errors import ConfigError

from conftest import QUICKSTART
from test_jobs import free_port


@dataclass(frozen=True)
class Bad:
    name: str
    expected: str
    """Text the one-line error must contain: the field (or flag) and what is wrong."""
    command: str = "sweep"
    overrides: dict[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    argv: tuple[str, ...] | None = None
    """Replaces the whole command line ({workflow}, {tmp} and {port} are filled in)."""
    space: str | None = None
    """Search space file text; the workflow points at it."""
    text: str | bytes | None = None
    """Workflow file content, replacing the written workflow."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Files written into the tmp folder first ({tmp} filled in); each must be unchanged afterwards."""
    env: dict[str, str] = field(default_factory=dict)
    append: str = ""
    """Text appended to the written workflow file."""


SPACE_HEAD = "params:\n  distillation.alpha: {type: float, low: 0.1, high: 0.9}\n"
PYTHON_TAG = "!!python/object/apply:os.system ['touch {tmp}/pwned']"


PICKLE_MARKER = Path("/tmp/lepton_ray_bad_input_pickle_ran")


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {PICKLE_MARKER}",))


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


HOSTILE_PICKLE = pickle.dumps({"model": "cnn_large", "state_dict": _RunsCode()}, protocol=2)
BARE_STATE_DICT = torch_bytes({"features.0.weight": torch.zeros(4, 1, 3, 3)})
"""A user's own teacher weights without the architecture: what a teacher file must hold is missing."""
UNKNOWN_ARCHITECTURE = torch_bytes({"model": "resnet9000", "options": {}, "input_shape": [1, 8, 8], "num_classes": 10, "state_dict": {}})
TRAIN_BLOCK = {"epochs": 1}

CASES = [
    # wrong keys, types and ranges
    Bad("unknown top-level key", "foo: unknown key", overrides={"foo": 1}),
    Bad("unknown nested key", "training.epochz: unknown key", "train", overrides={"training.epochz": 3}),
    Bad("epochs not a number", "training.epochs", "train", overrides={"training.epochs": "three"}),
    Bad("lr a list", "training.lr", overrides={"training.lr": [0.1]}),
    Bad("alpha above 1", "distillation.alpha", overrides={"distillation.alpha": 1.5}),
    Bad("negative temperature", "distillation.temperature", "train", overrides={"distillation.temperature": -1.0}),
    Bad("bits 3", "compression.quantization.bits", "train", overrides={"compression.quantization.bits": 3}),
    Bad("bits 16", "compression.quantization.bits", overrides={"compression.quantization.bits": 16}),
    Bad("bits 8 (saturates int8 kernels on AVX2 CPUs)", "compression.quantization.bits: 8 is not offered", overrides={"compression.quantization.bits": 8}),
    Bad("bits a string", "compression.quantization.bits", overrides={"compression.quantization.bits": "eight"}),
    Bad("sparsity 0.99", "compression.pruning.sparsity", overrides={"compression.pruning.sparsity": 0.99}),
    Bad("pruning ends after training", "error: compression.pruning.end_epoch: must be in", overrides={"compression.pruning.end_epoch": 100}),
    Bad("val_fraction 0.7", "data.val_fraction", "train", overrides={"data.val_fraction": 0.7}),
    Bad("zero samples", "sweep.num_samples", overrides={"sweep.num_samples": 0}),
    Bad("top-k of zero logits", "sweep.teacher_cache_top_k", overrides={"sweep.teacher_cache_top_k": 0}),
    Bad("bad run name", "name:", overrides={"name": "bad name!"}),
    Bad("empty experiment", "tracking.experiment", overrides={"tracking.experiment": ""}),
    Bad("no teacher source", "teacher: set 'checkpoint'", overrides={"teacher.checkpoint": None}),
    Bad("unknown cost metric", "sweep.cost_metric", overrides={"sweep.cost_metric": "flops"}),
    Bad("unknown constraint metric", "sweep.constraints.flops: unknown metric", overrides={"sweep.constraints": {"flops": 1e6}}),
    # unknown names and options
    Bad("unknown data set", "data.name: unknown data set 'digitz'; did you mean 'digits'", "train", overrides={"data.name": "digitz"}),
    Bad("unknown student model", "student.name: unknown model 'resnet9000'", overrides={"student.name": "resnet9000"}),
    Bad("unknown teacher model", "teacher.name: unknown model", "train", overrides={"teacher.name": "vgg_giant"}),
    Bad("unknown loss", "distillation.losses.0.name: unknown distillation loss 'kdd'", overrides={"distillation.losses.0.name": "kdd"}),
    Bad("unknown loss option", "distillation.losses.0.options", "train", overrides={"distillation.losses.0.options": {"temp": 2}}),
    Bad("hint on a missing layer", "distillation.losses.0.options: student layer 'features.99'", overrides={
        "distillation.losses": [{"name": "hint", "options": {"student_layer": "features.99", "teacher_layer": "features.1"}}]}),
    Bad("unknown selection policy", "selection.policy: unknown selection policy 'best'", overrides={"selection.policy": "best"}),
    Bad("unknown searcher", "sweep.searcher: unknown searcher 'tpee'; did you mean 'tpe'?", overrides={"sweep.searcher": "tpee"}),
    Bad("unknown selection option", "selection.options.budgett: unknown option", overrides={"selection.options": {"budgett": 1}}),
    Bad("unknown data option", "data.options.zoom", "train", overrides={"data.options": {"zoom": 2}}),
    Bad("data option of the wrong type", "data.options", overrides={"data.name": "synthetic", "data.options": {"num_samples": "many"}}),
    Bad("unknown model option", "student.options", overrides={"student.options": {"no_such_option": 3}}),
    # files
    Bad("teacher checkpoint missing", "teacher.checkpoint: file", "train", overrides={"teacher.checkpoint": "{tmp}/nope.pt"}),
    Bad("teacher checkpoint truncated", "teacher.checkpoint: ", overrides={"teacher.checkpoint": "{tmp}/cut.pt"}, files={"cut.pt": b"PK\x03\x04 truncated"}),
    Bad("teacher for other data", "teacher.checkpoint: teacher was saved for", "train",
        overrides={"data.name": "synthetic", "data.options": {"num_classes": 5}}),
    Bad("cifar root missing", "data.root", overrides={"data.name": "cifar10", "data.root": "{tmp}/no-cifar"}),
    Bad("search space file missing", "sweep.space: file", overrides={"sweep.space": "{tmp}/nope.yaml"}),
    Bad("workflow file missing", "workflow: file", "train", argv=("train", "{tmp}/missing.yaml")),
    Bad("workflow is a folder", "workflow: file", argv=("sweep", "{tmp}")),
    Bad("workflow not UTF-8", "workflow: cannot read", text=b"name: \xff\xfe\x00bad\n"),
    Bad("workflow is a list", "workflow: ", "train", text="- just\n- a list\n"),
    Bad("workflow is empty", "must hold a mapping", text=""),
    Bad("workflow YAML syntax", "not valid plain YAML", text="name: [unclosed\n"),
    Bad("workflow python tag", "not valid plain YAML", "train", text=f"name: x\nteacher: {PYTHON_TAG}\n"),
    # search spaces
    Bad("empty search space", "search_space.params", space="params: {}\n"),
    Bad("empty search space file", "sweep.space: ", space=""),
    Bad("bits outside 4..7 in the space", "search_space.params.compression.quantization.bits: value 3", space=SPACE_HEAD
        + "  compression.quantization.bits: {type: categorical, choices: [3, 8]}\n"),
    Bad("knob names no field", "search_space.params.training.foo", space="params:\n  training.foo: {type: float, low: 0.1, high: 0.2}\n"),
    Bad("low above high", "search_space.params.distillation.alpha", space="params:\n  distillation.alpha: {type: float, low: 0.9, high: 0.1}\n"),
    Bad("log range from 0", "search_space.params.training.lr", space="params:\n  training.lr: {type: float, low: 0.0, high: 0.1, log: true}\n"),
    Bad("unknown distribution", "search_space.params.distillation.alpha", space="params:\n  distillation.alpha: {type: normal, mean: 0.5}\n"),
    Bad("search space python tag", "not valid plain YAML", space=f"params: {PYTHON_TAG}\n"),
    Bad("unknown loss among the searched choices", "search_space.params.distillation.losses.0.name: value 'nope'",
        space="params:\n  distillation.losses.0.name: {type: categorical, choices: [kd, nope]}\n"),
    Bad("baseline sets no knob", "sweep.baseline_trials.0.training.lrr: not a knob", space=SPACE_HEAD,
        overrides={"sweep.baseline_trials": [{"training.lrr": 0.1}]}),
    Bad("baseline outside the range", "sweep.baseline_trials.0.distillation.alpha: value 1.5", space=SPACE_HEAD,
        overrides={"sweep.baseline_trials": [{"distillation.alpha": 1.5}]}),
    # resources
    Bad("more workers than CPUs", "resources.num_workers", overrides={"resources.cpus_per_worker": 4096.0}),
    Bad("GPU trial on a machine without enough GPUs", "resources.use_gpu: a trial needs 64 workers", "train",
        overrides={"resources.use_gpu": True, "resources.num_workers": 64, "resources.cpus_per_worker": 0.01}),
    Bad("fractional GPUs with DDP", "resources.gpus_per_worker: 0.5 GPU per worker with 2 DDP workers", overrides={
        "resources.use_gpu": True, "resources.gpus_per_worker": 0.5}),
    Bad("fp16 on CPU", "training.precision: fp16 needs a GPU", "train", overrides={"training.precision": "fp16"}),
    # tracking and cluster
    Bad("tracking server unreachable", "tracking.uri: cannot reach MLflow at http://127.0.0.1:", overrides={"tracking.uri": "http://127.0.0.1:{port}"}),
    Bad("tracking server from the environment unreachable", "$MLFLOW_TRACKING_URI", "train", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}),
    Bad("tracking scheme unknown", "tracking.uri: ftp://***@host/x has no MLflow tracking store", overrides={"tracking.uri": "ftp://me:pw@host/x"}),
    Bad("tracking sqlite folder missing", "tracking.uri: folder", "train", overrides={"tracking.uri": "sqlite:///{tmp}/no/such/dir/mlflow.db"}),
    Bad("cluster address closed", "--address: no Ray cluster answers at 127.0.0.1:", "train", args=("--address", "127.0.0.1:{port}")),
    Bad("RAY_ADDRESS closed", "RAY_ADDRESS: no Ray cluster answers", env={"RAY_ADDRESS": "127.0.0.1:{port}"}),
    Bad("dashboard URL as cluster address", "--address: http://127.0.0.1:8265 is a dashboard address", args=("--address", "http://127.0.0.1:8265")),
    # command line
    Bad("unknown flag", "unrecognized arguments: --no-such-flag", "train", args=("--no-such-flag",)),
    Bad("workflow argument missing", "the following arguments are required: workflow", argv=("sweep",)),
    Bad("unknown command", "invalid choice: 'trian'", argv=("trian", "{workflow}")),
    Bad("resume with nothing to resume", "--resume: no sweep to resume", args=("--resume",)),
    Bad("--set without a value", "--set: expected KEY=VALUE", "train", args=("--set", "training.epochs")),
    Bad("--set of an unknown path", "training.epochz: unknown key", args=("--set", "training.epochz=3")),
    Bad("--set below a number", "training.epochs.x.y: training.epochs is not a mapping", "train", args=("--set", "training.epochs.x.y=1")),
    Bad("--set past the end of a list", "distillation.losses.5.name: '5' is not an index", args=("--set", "distillation.losses.5.name=kd")),
    Bad("--set with an empty path part", "--set: expected KEY=VALUE with a dotted KEY", args=("--set", "training..epochs=3")),
    Bad("--set value with a python tag", "--set teacher: value", "train", args=("--set", f"teacher={PYTHON_TAG}")),
    Bad("--set value not YAML", "--set training.epochs: value '[1'", args=("--set", "training.epochs=[1")),
    Bad("--set value with a key twice", "--set data.options: key 'zoom' is given twice", "train", args=("--set", "data.options={zoom: 1, zoom: 2}")),
    # more of the same kind as the table (below)
    Bad("a key twice inside a block", "key 'epochs' is given twice in one mapping (line 2)", text="name: x\ntraining: {epochs: 3, epochs: 4}\n"),
    Bad("search space knob twice", "key 'distillation.alpha' is given twice", space=SPACE_HEAD + "  distillation.alpha: {type: float, low: 0.2, high: 0.3}\n"),
    Bad("search space file over 1 MiB", "sweep.space: ", space="#" * (1 << 20) + "\n" + SPACE_HEAD),
    Bad("name '.'", "name: names the output folder itself", "train", overrides={"name": "."}),
    Bad("output_dir inside a file", "output_dir: ", overrides={"output_dir": "{tmp}/notes.txt/runs"}, files={"notes.txt": b"x"}),
    Bad("run folder is a file", "name: ", "train", overrides={"output_dir": "{tmp}/out", "name": "taken"}, files={"out/taken": b"x"}),
    Bad("model name with a colon", "tracking.model_name: not a valid MLflow registered-model name", overrides={"tracking.model_name": "team:student"}),
    Bad("sqlite URI without a file", "tracking.uri: sqlite:/// names no database file", "train", overrides={"tracking.uri": "sqlite:///"}),
    Bad("teacher to train into a path below a file", "teacher.checkpoint: ", "train",
        overrides={"teacher.checkpoint": "{tmp}/notes.txt/teacher.pt", "teacher.train": TRAIN_BLOCK}, files={"notes.txt": b"x"}),
    Bad("extra teacher checkpoint is a folder", "extra_teachers.0.checkpoint: ", overrides={"extra_teachers": [{"name": "cnn_small", "checkpoint": "{tmp}"}]}),
    Bad("teacher file of a bare state_dict", "teacher.checkpoint: ", "train", overrides={"teacher.checkpoint": "{tmp}/mine.pt"}, files={"mine.pt": BARE_STATE_DICT}),
    Bad("teacher file of an unknown architecture", "teacher.checkpoint: the file names model 'resnet9000' with options {}, which does not build", overrides={"teacher.checkpoint": "{tmp}/mine.pt"},
        files={"mine.pt": UNKNOWN_ARCHITECTURE}),
    Bad("pruning start past the epochs with no pruning", "compression.pruning.start_epoch: must be < training.epochs=3, got 9", "train",
        overrides={"compression.pruning.start_epoch": 9, "training.epochs": 3}),
    Bad("float range on the training batch size", "search_space.params.training.batch_size: a float range", space="params:\n  training.batch_size: {type: float, low: 16, high: 64}\n"),
]

TABLE = [
    # the table: each refused by `validate` and by `train`, before anything starts
    Bad("teacher file empty", "is empty, truncated or not a torch checkpoint", overrides={"teacher.checkpoint": "{tmp}/empty.pt"}, files={"empty.pt": b""}),
    Bad("teacher file is text", "is empty, truncated or not a torch checkpoint", overrides={"teacher.checkpoint": "{tmp}/t.pt"}, files={"t.pt": b"see ../teachers\n"}),
    Bad("teacher file a pickle with code", "names the Python object posix.system, which loading would call); refusing to load it: save tensors",
        overrides={"teacher.checkpoint": "{tmp}/evil.pt"}, files={"evil.pt": HOSTILE_PICKLE}),
    Bad("teacher checkpoint a folder", "teacher.checkpoint: ", overrides={"teacher.checkpoint": "{tmp}"}),
    Bad("teacher checkpoint a folder, with a train block", "is a folder, not a file", overrides={"teacher.checkpoint": "{tmp}", "teacher.train": TRAIN_BLOCK}),
    Bad("output_dir an existing file", "output_dir: ", overrides={"output_dir": "{tmp}/notes.txt"}, files={"notes.txt": b"x"}),
    Bad("name ..", "name: names the output folder itself or its parent", overrides={"name": ".."}),
    Bad("model name a/b", "tracking.model_name: not a valid MLflow registered-model name", overrides={"tracking.model_name": "a/b"}),
    Bad("sqlite URI with two slashes", "tracking.uri: sqlite://mlflow.db names no database file; a SQLite URI has three slashes",
        overrides={"tracking.uri": "sqlite://mlflow.db"}),
    Bad("pruning starts after the last epoch", "compression.pruning.start_epoch: must be < training.epochs=8, got 12",
        overrides={"compression.pruning.sparsity": 0.5, "compression.pruning.start_epoch": 12}),
    Bad("multi_teacher weights for 3 teachers with one", "distillation.losses.0.options.weights: 3 weights for 1 teachers",
        overrides={"distillation.losses": [{"name": "multi_teacher", "options": {"weights": [0.5, 0.3, 0.2]}}]}),
    Bad("dist on a 2-class data set", "distillation.losses.0.name: dist relates classes to each other and needs 3 or more, the data has 2; use kd",
        overrides={"data": {"name": "synthetic", "options": {"num_classes": 2}}, "teacher.checkpoint": "{tmp}/teacher.pt", "teacher.train": TRAIN_BLOCK,
                   "distillation.losses": [{"name": "dist"}]}),
    Bad("dist searched on a 2-class data set", "search_space.params.distillation.losses.0.name: value 'dist' gives an invalid workflow "
        "(distillation.losses.0.name: dist relates classes to each other and needs 3 or more, the data has 2; use kd)",
        overrides={"data": {"name": "synthetic", "options": {"num_classes": 2}}, "teacher.checkpoint": "{tmp}/teacher.pt", "teacher.train": TRAIN_BLOCK},
        space="params:\n  distillation.losses.0.name: {type: categorical, choices: [kd, dist]}\n"),
    Bad("float range on training.epochs", "search_space.params.training.epochs: a float range samples values such as",
        space="params:\n  training.epochs: {type: float, low: 2, high: 6}\n"),
    Bad("top-level key twice", "key 'training' is given twice", append="training: {epochs: 3}\n"),
    Bad("tracking server unreachable (validate too)", "tracking.uri: cannot reach MLflow at http://127.0.0.1:", overrides={"tracking.uri": "http://127.0.0.1:{port}"}),
    Bad("PostgreSQL store with no server", "tracking.uri: cannot reach the MLflow database at postgresql://***@127.0.0.1:",
        overrides={"tracking.uri": "postgresql://lepton:secret@127.0.0.1:{port}/mlflow"}),
    Bad("MySQL store without its driver", "tracking.uri: cannot reach the MLflow database at mysql://***@127.0.0.1:",
        overrides={"tracking.uri": "mysql://lepton:secret@127.0.0.1:{port}/mlflow"}),
    Bad("workflow over 1 MiB", "MiB limit for a YAML config", append="#" * (1 << 20) + "\n"),
    Bad("user's own state_dict of another architecture next to a train block", "teacher.checkpoint: the weights do not fit model 'cnn_large' with options",
        overrides={"teacher.checkpoint": "{tmp}/mine.pt", "teacher.train": TRAIN_BLOCK}, files={"mine.pt": BARE_STATE_DICT}),
]
CASES += [replace(case, name=f"{case.name} [{command}]", command=command) for case in TABLE for command in ("validate", "train")]


@pytest.fixture
def nothing_may_start(monkeypatch: pytest.MonkeyPatch):
    """Turn a case that slips through the checks into a loud failure instead of a sweep on this machine."""
    import ray

    from lepton_ray.tracking.tracker import Tracker
    from lepton_ray.trial import teacher

    def refuse(what: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"bad input reached {what}")

        return fail

    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(teacher, "train_teacher", refuse("teacher training"))
    monkeypatch.setattr(Tracker, "__init__", refuse("MLflow"))


def fill(value: Any, tmp_path: Path, port: int) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp_path)).replace("{port}", str(port))
    if isinstance(value, dict):
        return {key: fill(item, tmp_path, port) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, tmp_path, port) for item in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_field_and_starts_nothing(
    case, write_workflow, teacher_checkpoint, tmp_path, monkeypatch, capsys, nothing_may_start
):
    import ray

    port = free_port()
    PICKLE_MARKER.unlink(missing_ok=True)
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content.replace(b"{tmp}", str(tmp_path).encode()))
    written = {name: (tmp_path / name).read_bytes() for name in case.files}
    overrides = {"teacher.checkpoint": str(teacher_checkpoint), "teacher.train": None, **fill(case.overrides, tmp_path, port)}
    if case.space is not None:
        (tmp_path / "space.yaml").write_text(fill(case.space, tmp_path, port))
        overrides["sweep.space"] = str(tmp_path / "space.yaml")
    workflow = write_workflow(overrides)
    with workflow.open("a") as handle:
        handle.write(case.append)
    if case.text is not None:
        text = fill(case.text, tmp_path, port)
        workflow.write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, value in case.env.items():
        monkeypatch.setenv(name, fill(value, tmp_path, port))
    argv = list(case.argv) if case.argv is not None else [case.command, "{workflow}", *case.args]
    argv = [fill(arg, tmp_path, port).replace("{workflow}", str(workflow)) for arg in argv]

    code = main(argv)

    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("lepton-ray: error: "), err
    assert case.expected in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("mlruns"))
    assert not (tmp_path / "runs").exists(), "no sweep folder, study or teacher was written"
    assert not (tmp_path / "pwned").exists() and not PICKLE_MARKER.exists(), "a YAML tag or a pickle ran code"
    assert {name: (tmp_path / name).read_bytes() for name in case.files} == written, "a file the user pointed to was changed"


def test_corpus_covers_every_command_and_at_least_thirty_cases():
    commands = {case.argv[0] if case.argv else case.command for case in CASES}
    assert len(CASES) >= 30 and {"validate", "train", "sweep"} <= commands


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


@pytest.mark.parametrize(
    "resources, cluster_gpus, expected",
    [
        ({"num_workers": 4, "gpus_per_worker": 1.0}, 4.0, None),
        ({"num_workers": 4, "gpus_per_worker": 1.0}, 3.0, "needs 4 workers x 1 GPU = 4 GPUs but the cluster has 3"),
        ({"num_workers": 2, "gpus_per_worker": 2.0}, 3.0, "= 4 GPUs but the cluster has 3"),
        ({"num_workers": 1, "gpus_per_worker": 0.25}, 1.0, None),
        ({"num_workers": 2, "gpus_per_worker": 0.5}, 8.0, "resources.gpus_per_worker: 0.5 GPU per worker with 2 DDP workers"),
        ({"num_workers": 2, "gpus_per_worker": 0.5}, None, "resources.gpus_per_worker"),
        ({"num_workers": 4, "gpus_per_worker": 1.0}, None, None),
    ],
)
def test_gpu_check_counts_every_worker_and_refuses_shared_gpus_under_ddp(resources, cluster_gpus, expected):
    overrides = {"resources.use_gpu": True, "resources.cpus_per_worker": 0.01, **{f"resources.{k}": v for k, v in resources.items()}}
    wf = load_workflow(QUICKSTART, overrides)
    if expected is None:
        check_resources(wf, 64.0, cluster_gpus)
        return
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("+", r"\+")) as err:
        check_resources(wf, 64.0, cluster_gpus)
    assert "\n" not in str(err.value)
