"""`lepton-ray` command line: thin commands over the package. Errors in input exit 2 with one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import yaml

from lepton_ray.errors import LeptonError


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set training.epochs=3` -> {"training.epochs": 3}; values are parsed as YAML scalars."""
    from lepton_ray.config import UniqueKeyLoader

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise LeptonError(f"--set: expected KEY=VALUE with a dotted KEY such as training.epochs, got {item!r}")
        try:
            overrides[key] = yaml.load(value, Loader=UniqueKeyLoader)
        except LeptonError as err:
            raise LeptonError(f"--set {key}: {err}") from None
        except yaml.YAMLError as err:
            first_line = str(err).strip().splitlines()[0]
            raise LeptonError(f"--set {key}: value {value!r} is not a plain YAML scalar or list ({first_line}); quote it or remove tags") from None
    return overrides


def load_checked(args: argparse.Namespace, cluster: tuple[float, float] | None = None):
    from lepton_ray.checks import check_workflow
    from lepton_ray.config import load_workflow

    wf = load_workflow(Path(args.workflow), parse_set(args.set))
    space = check_workflow(wf, cluster)
    return wf, space


def cmd_validate(args: argparse.Namespace) -> int:
    wf, space = load_checked(args, _local_cluster(args))
    resolved = {"workflow": wf.to_dict(), "search_space": space.model_dump(mode="json") if space else None}
    print(yaml.safe_dump(resolved, sort_keys=False))
    print(f"ok: {args.workflow} is valid")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lepton_ray.sweep.runner import run_sweep

    wf, _ = load_checked(args, _local_cluster(args))
    _check_cluster_reachable(args)
    run_sweep(wf, space=None, resume=False, address=args.address)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from lepton_ray.sweep.runner import run_sweep

    wf, space = load_checked(args, _local_cluster(args))
    _check_cluster_reachable(args)
    run_sweep(wf, space=space, resume=args.resume, address=args.address, select_and_export=not args.no_export)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """The workflow's selection policy over an existing sweep: the front and the pick, nothing written."""
    from lepton_ray.tracking.leaderboard import format_table
    from lepton_ray.deploy.pareto import select
    from lepton_ray.sweep.results import existing_sweep

    wf, _ = load_checked(args)
    outcome, _ = existing_sweep(wf)
    print(format_table(outcome.trials, wf.sweep.cost_metric, pareto_only=True))
    print(select(outcome.trials, wf.sweep.cost_metric, outcome.teacher_accuracy, wf.selection, wf.export.tolerance).explanation)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Select, export to int8, verify in ONNX Runtime and register, for an existing sweep."""
    from lepton_ray.data.datasets import build_data
    from lepton_ray.sweep.results import existing_sweep, select_export_publish

    wf, _ = load_checked(args)
    outcome, tracker = existing_sweep(wf)
    select_export_publish(wf, outcome, build_data(wf.data), tracker, print)
    tracker.report_unlogged()
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from lepton_ray.config import ExportConfig
    from lepton_ray.tracking.leaderboard import format_table, latest_sweep_run_id, trials_frame
    from lepton_ray.tracking.tracker import Tracker
    from lepton_ray.tracking.uris import tracking_uri

    tracker = Tracker(tracking_uri(args.tracking_uri), args.experiment, create=False)
    parent = args.sweep_run or latest_sweep_run_id(tracker)
    if parent is None:
        raise LeptonError(f"--experiment: no sweep found in experiment {args.experiment!r}; run `lepton-ray sweep` first or pick another experiment")
    table = trials_frame(tracker, parent, args.cost, ExportConfig.model_fields["tolerance"].default)
    print(format_table(table, args.cost, sort=args.sort, pareto_only=args.pareto_only))
    for path in filter(None, [args.csv, args.json]):
        shown = table[table["on_front"]] if args.pareto_only else table
        shown.to_csv(path, index=False) if path == args.csv else shown.to_json(path, orient="records", indent=2)
        print(f"wrote {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from lepton_ray.cluster import jobs
    from lepton_ray.config import load_workflow

    wf = load_workflow(Path(args.workflow), parse_set(args.set))
    space = jobs.check_for_cluster(wf)
    flags = ["--no-export"] * args.no_export + ["--resume"] * args.resume
    job_id = jobs.submit(wf, space, args.address, flags)
    print(f"submitted {job_id}  (lepton-ray status {job_id} --address {args.address})", flush=True)
    if not args.follow:
        return 0
    try:
        status = jobs.follow(args.address, job_id)
    except KeyboardInterrupt:
        print(f"stopped following; the job keeps running (lepton-ray stop {job_id} --address {args.address})")
        return 130
    print(f"job {job_id}: {status}")
    return 0 if status == jobs.SUCCEEDED else 1


def cmd_status(args: argparse.Namespace) -> int:
    from lepton_ray.cluster.jobs import job_details

    details = job_details(args.address, args.job)
    print(f"{args.job}: {details.status.value}  {details.message or ''}".rstrip())
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from lepton_ray.cluster.jobs import stop

    print(f"{args.job}: {'stop requested' if stop(args.address, args.job) else 'already ended'}")
    return 0


def _local_cluster(args: argparse.Namespace) -> tuple[float, float] | None:
    """Size of the cluster this machine will start; None when joining one (Ray checks it then)."""
    from lepton_ray.checks import local_cluster_size
    from lepton_ray.cluster.ray_runtime import cluster_address

    return None if cluster_address(getattr(args, "address", None)) else local_cluster_size()


def _check_cluster_reachable(args: argparse.Namespace) -> None:
    """A cluster to join must answer before the teacher stage and MLflow start (Ray itself would wait, then fail)."""
    from lepton_ray.cluster.ray_runtime import check_reachable, cluster_address

    address = cluster_address(args.address)
    if address:
        check_reachable(address, "--address" if args.address else "RAY_ADDRESS")


def _workflow_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow YAML file, e.g. workflows/digits_quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a workflow field, e.g. training.epochs=3")


class UsageError(LeptonError):
    """A command line argparse cannot parse (unknown flag, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the flag and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from lepton_ray import metrics
    from lepton_ray.config import SweepConfig

    parser = _Parser(prog="lepton-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a workflow and its search space; run nothing")
    _workflow_args(validate)
    validate.set_defaults(handler=cmd_validate)

    train = commands.add_parser("train", help="run the workflow once as one DDP distillation trial")
    _workflow_args(train)
    train.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local cluster)")
    train.set_defaults(handler=cmd_train)

    sweep = commands.add_parser("sweep", help="search the workflow's space with Ray Tune + Optuna, then select and export")
    _workflow_args(sweep)
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local cluster)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its storage path")
    sweep.add_argument("--no-export", action="store_true", help="stop after the sweep; skip selection and int8 export")
    sweep.set_defaults(handler=cmd_sweep)

    for name, handler, text in [
        ("select", cmd_select, "apply the workflow's selection policy to its finished sweep; print the front and the pick"),
        ("export", cmd_export, "select from the workflow's finished sweep, export to int8 ONNX, verify, register as champion"),
    ]:
        command = commands.add_parser(name, help=text)
        _workflow_args(command)
        command.set_defaults(handler=handler)

    board = commands.add_parser("leaderboard", help="print a sweep's trials from MLflow")
    board.add_argument("--experiment", default="digits-quickstart", help="MLflow experiment name")
    board.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow URI ($MLFLOW_TRACKING_URI wins)")
    board.add_argument("--sweep-run", default=None, help="parent run id of the sweep (default: the latest sweep)")
    board.add_argument("--cost", default=SweepConfig.model_fields["cost_metric"].default, choices=metrics.COST_METRICS, help="cost axis of the front")
    board.add_argument("--sort", default=None, help="column to sort by (accuracy descending, costs ascending)")
    board.add_argument("--pareto-only", action="store_true", help="show only trials on the accuracy/cost front")
    board.add_argument("--csv", default=None, help="also write the table to this CSV file")
    board.add_argument("--json", default=None, help="also write the table to this JSON file")
    board.set_defaults(handler=cmd_leaderboard)

    address_help = "Ray dashboard of the cluster, e.g. http://127.0.0.1:8265 (via `ray dashboard cluster.yaml`)"
    submit = commands.add_parser("submit", help="run the sweep on a Ray cluster as a Ray Job")
    _workflow_args(submit)
    submit.add_argument("--address", required=True, help=address_help)
    submit.add_argument("--follow", action="store_true", help="print the job's logs until it ends; exit 1 unless it succeeded")
    submit.add_argument("--resume", action="store_true", help="continue the interrupted sweep under the workflow's output_dir")
    submit.add_argument("--no-export", action="store_true", help="stop after the sweep; skip selection and int8 export")
    submit.set_defaults(handler=cmd_submit)
    for name, handler, text in [("status", cmd_status, "print a submitted job's status"), ("stop", cmd_stop, "stop a submitted job")]:
        job = commands.add_parser(name, help=text)
        job.add_argument("job", help="job id printed by `lepton-ray submit`")
        job.add_argument("--address", required=True, help=address_help)
        job.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except LeptonError as err:
        print(f"lepton-ray: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
