"""The committed Fashion-MNIST teacher: a benchmark rerun starts from it instead of an hour of teacher training.

`benchmarks/assets/fashion_mnist_teacher.pt` is the file the teacher stage of `workflows/fashion_mnist.yaml`
wrote (its recipe, accuracy, training seconds and sha256 in the JSON next to it). A benchmark copies it to the
workflow's teacher path when nothing is there yet and the workflow still describes the same teacher (same
fingerprint); otherwise the product's teacher stage trains one, as it does for users.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

RECORD = Path(__file__).resolve().parent / "assets" / "fashion_mnist_teacher.json"


def install_committed_teacher(target: Path, fingerprint: str, record_path: Path = RECORD) -> str | None:
    """Copy the committed teacher to `target` when it is missing and `fingerprint` is the asset's; say what was done
    (None when `target` exists: it is used as it is)."""
    record = json.loads(record_path.read_text())
    if target.exists():
        return None
    if record["fingerprint"] != fingerprint:
        return (f"teacher: the committed asset is for fingerprint {record['fingerprint']}, the workflow's teacher is {fingerprint}: "
                "the teacher stage trains it (retrain and recommit the asset to skip that next time)")
    asset = record_path.parent / record["file"]
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise RuntimeError(f"{asset}: sha256 {digest} is not the recorded {record['sha256']}; restore it from git")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(asset, partial)
    partial.replace(target)
    return f"teacher: the committed asset ({record['test_accuracy']:.2%} test, sha256 {digest[:12]}) copied to {target}"
