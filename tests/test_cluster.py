"""cluster.yaml against Ray's own launcher schema, and the GPU settings a trial asks Ray for.

No cluster and no GPU is needed: `prepare_config` + `validate_config` are what `ray up` runs
before it talks to the cloud, and building a `TorchTrainer` does not start Ray.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from lepton_ray.config import load_workflow
from lepton_ray.trial.trainer import TrialInputs, build_trainer

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_up_checks(config: dict) -> dict:
    """The validation `ray up` runs before launching anything."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_launcher_validation(cluster):
    prepared = ray_up_checks(cluster)
    workers = {name: spec for name, spec in prepared["available_node_types"].items() if name != prepared["head_node_type"]}
    assert workers, "at least one worker node type"
    assert all(0 <= spec["min_workers"] <= spec["max_workers"] for spec in workers.values())
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize(
    "break_it, error",
    [
        (lambda c: c.update(max_worker=3), jsonschema.ValidationError),  # misspelt key
        (lambda c: c["available_node_types"]["gpu_1x"]["resources"].update(GPU=0.5), jsonschema.ValidationError),
        (lambda c: c.update(head_node_type="no_such_type"), ValueError),
        (lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=11), ValueError),  # above the global max_workers
    ],
)
def test_rays_validation_rejects_broken_variants_of_cluster_yaml(cluster, break_it, error):
    break_it(cluster)
    with pytest.raises(error):
        ray_up_checks(cluster)


def test_cluster_yaml_keeps_token_auth_on_and_the_dashboard_on_loopback(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    worker_start = " ".join(cluster["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "disabled" not in CLUSTER_YAML.read_text()
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_yaml_installs_the_mounted_checkout_without_local_state(cluster):
    remote_checkout = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert f"pip install --quiet -e {remote_checkout}" in cluster["setup_commands"]
    assert {".venv", ".git", "runs", "mlruns", "*.db"} <= set(cluster["rsync_exclude"])
    assert cluster["docker"]["worker_image"].endswith("-gpu")


def trainer_for(overrides: dict, tmp_path: Path):
    wf = load_workflow(REPO / "workflows" / "digits_quickstart.yaml", overrides)
    return build_trainer(wf, TrialInputs(teachers=[]), tmp_path, "trial-0000")


def test_cpu_trial_asks_for_no_gpu_and_uses_gloo(tmp_path):
    trainer = trainer_for({}, tmp_path)
    assert trainer.scaling_config.use_gpu is False
    assert trainer.scaling_config.resources_per_worker == {"CPU": 0.49}
    assert trainer.backend_config.backend == "gloo"


def test_gpu_trial_gives_each_ddp_worker_a_gpu_over_nccl(tmp_path):
    trainer = trainer_for({"resources.use_gpu": True, "resources.num_workers": 4, "resources.cpus_per_worker": 2}, tmp_path)
    assert trainer.scaling_config.use_gpu is True
    assert trainer.scaling_config.num_workers == 4
    assert trainer.scaling_config.resources_per_worker == {"CPU": 2, "GPU": 1.0}
    assert trainer.backend_config.backend == "nccl"


def test_small_student_trial_asks_for_a_fraction_of_one_gpu(tmp_path):
    trainer = trainer_for({"resources.use_gpu": True, "resources.num_workers": 1, "resources.gpus_per_worker": 0.25}, tmp_path)
    assert trainer.scaling_config.resources_per_worker == {"CPU": 0.49, "GPU": 0.25}
    assert trainer.scaling_config.num_workers == 1
