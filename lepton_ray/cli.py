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
    from lepton_ray.yaml_input import UniqueKeyLoader

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


def load_workflow_args(args: argparse.Namespace):
    from lepton_ray.config import load_workflow

    return load_workflow(Path(args.workflow), parse_set(args.set))


def load_checked(args: argparse.Namespace):
    from lepton_ray.checks import check_workflow

    wf = load_workflow_args(args)
    return wf, check_workflow(wf)


def cmd_validate(args: argparse.Namespace) -> int:
    from lepton_ray.checks import check_workflow, local_cluster_size
    from lepton_ray.cluster.ray_runtime import cluster_address
    from lepton_ray.export.metadata import artifact_metadata, describe
    from lepton_ray.sweep.checks import check_sweep, selection_noise_warning, teacher_line, teacher_val_accuracy

    wf = load_workflow_args(args)
    splits: list = []
    # Sized to this machine unless RAY_ADDRESS names a cluster to join (Ray checks resources there).
    space = check_workflow(wf, None if cluster_address() else local_cluster_size(), on_data=splits.append)
    check_sweep(wf, space)
    resolved = {"workflow": wf.to_dict(), "search_space": space.model_dump(mode="json") if space else None}
    print(yaml.safe_dump(resolved, sort_keys=False))
    print(f"ok: {args.workflow} is valid")
    print(f"data: {wf.data.name}, {splits[0].summary()}")
    if splits[0].factory_splits:
        print(f"data: {wf.data.name} returned its own DataSplits, so data.seed, data.val_fraction, data.test_fraction and data.label_fraction are not used")
    print(f"model input: {describe(artifact_metadata(splits[0].contract))}")
    print(teacher_line(wf))
    for line in filter(None, [selection_noise_warning(wf, len(splits[0].val), teacher_val_accuracy(wf))]):
        print(line)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lepton_ray.sweep.api import check_run
    from lepton_ray.sweep.runner import run_sweep

    wf = load_workflow_args(args)
    check_run(wf, args.address, "--address")
    run_sweep(wf, space=None, resume=False, address=args.address)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from lepton_ray.sweep.api import check_run
    from lepton_ray.sweep.runner import run_sweep

    wf = load_workflow_args(args)
    space = check_run(wf, args.address, "--address")
    run_sweep(wf, space=space, resume=args.resume, address=args.address, select_and_export=not args.no_export)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """The workflow's selection policy over an existing sweep: the front and the pick, nothing written.
    It reads MLflow only, so it skips `check_workflow` (data and models: torch, the data set) and
    checks just what it uses: the policy and its options."""
    from lepton_ray.deploy.leaderboard import format_table
    from lepton_ray.deploy.pareto import POLICIES, parse_options, select
    from lepton_ray.sweep.results import existing_sweep
    from lepton_ray.user_code import load_user_code

    wf = load_workflow_args(args)
    load_user_code(wf.user_code)  # a `user_code` file may register the policy
    parse_options(POLICIES.get(wf.selection.policy).options_type, wf.selection.options)
    outcome, _ = existing_sweep(wf)
    print(format_table(outcome.trials, wf.sweep.cost_metric, pareto_only=True, val_samples=outcome.val_samples))
    print(select(outcome.trials, wf.sweep.cost_metric, outcome.teacher_accuracy, wf.selection, wf.export.tolerance, outcome.val_samples).explanation)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Select, export to int8, verify in ONNX Runtime and register, for an existing sweep."""
    from lepton_ray.data.datasets import build_data
    from lepton_ray.sweep.results import existing_sweep, select_export_publish

    wf, _ = load_checked(args)
    outcome, tracker = existing_sweep(wf)
    select_export_publish(wf, outcome, build_data(wf.data), tracker, print, trial=args.trial)
    tracker.report_unlogged()
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Tracking URI, experiment, cost and tolerance from the workflow when one is given; the flags override it."""
    from lepton_ray import metrics
    from lepton_ray.config import ExportConfig, SweepConfig, TrackingConfig
    from lepton_ray.sweep.results import workflow_sweep_run_id
    from lepton_ray.deploy.leaderboard import format_table, latest_sweep_run_id, trials_frame
    from lepton_ray.tracking.tracker import Tracker
    from lepton_ray.tracking.uris import tracking_uri

    if args.workflow:
        wf = load_workflow_args(args)
        tracking, sweep, export = wf.tracking, wf.sweep, wf.export
    elif args.set:
        raise UsageError("--set: overrides a workflow's fields; give the WORKFLOW before it, or use --experiment/--tracking-uri")
    else:
        tracking, sweep, export = TrackingConfig(experiment=DEFAULT_EXPERIMENT), SweepConfig(), ExportConfig()
    experiment = args.experiment or tracking.experiment
    cost = args.cost or sweep.cost_metric
    tracker = Tracker(tracking_uri(args.tracking_uri or tracking.uri), experiment, create=False)
    parent = args.sweep_run or (workflow_sweep_run_id(wf, tracker) if args.workflow else latest_sweep_run_id(tracker))
    if parent is None:
        field = "--experiment" if args.experiment else "tracking.experiment"
        whose = f" of workflow {wf.name!r}" if args.workflow else ""
        raise LeptonError(f"{field}: no sweep{whose} found in experiment {experiment!r}; run `lepton-ray sweep` first or pick another experiment")
    table = trials_frame(tracker, parent, cost, export.tolerance)
    val_samples = tracker.client.get_run(parent).data.metrics.get(metrics.VAL_SAMPLES)
    print(format_table(table, cost, sort=args.sort, pareto_only=args.pareto_only, all_columns=args.all_columns, val_samples=val_samples and int(val_samples)))
    for path in filter(None, [args.csv, args.json]):
        shown = table[table["on_front"]] if args.pareto_only else table
        shown.to_csv(path, index=False) if path == args.csv else shown.to_json(path, orient="records", indent=2)
        print(f"wrote {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from lepton_ray.cluster import jobs

    wf = load_workflow_args(args)
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


def cmd_list(args: argparse.Namespace) -> int:
    from lepton_ray.catalog import BY_IMPORT_PATH, catalog

    entries = catalog(args.kind)
    width = max(len(name) for name, _ in entries)
    for name, description in entries:
        print(f"{name:<{width}}  {description}".rstrip())
    if args.kind in BY_IMPORT_PATH:
        print(f"({BY_IMPORT_PATH[args.kind]})")
    return 0


def _workflow_args(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("workflow", nargs="?" if optional else None, help="workflow YAML file, e.g. workflows/digits_quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a workflow field, e.g. training.epochs=3")


DEFAULT_EXPERIMENT = "digits-quickstart"
"""The experiment `leaderboard` reads without a workflow or --experiment: the quickstart's."""


class UsageError(LeptonError):
    """A command line argparse cannot parse (unknown flag, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the flag and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from lepton_ray import metrics

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
        command.set_defaults(handler=handler, trial=None)
        if name == "export":
            command.add_argument("--trial", type=int, default=None, metavar="N",
                                 help="export trial N instead of the policy's pick (any finished trial; its int8 file is verified the same way)")

    board = commands.add_parser("leaderboard", help="print a sweep's trials from MLflow: the workflow's own sweep, else the experiment's latest")
    _workflow_args(board, optional=True)
    board.add_argument("--experiment", default=None, help=f"MLflow experiment (default: the workflow's tracking.experiment, else {DEFAULT_EXPERIMENT})")
    board.add_argument("--tracking-uri", default=None, help="MLflow URI (default: the workflow's tracking.uri; $MLFLOW_TRACKING_URI wins)")
    board.add_argument("--sweep-run", default=None, help="parent run id of the sweep (default: the workflow's sweep, as select reads it; with no workflow, the latest)")
    board.add_argument("--cost", default=None, choices=metrics.COST_METRICS, help="cost axis of the front (default: the workflow's sweep.cost_metric)")
    board.add_argument("--sort", default=None, help="column to sort by: any column, or accuracy / cost (accuracies descending, the rest ascending)")
    board.add_argument("--all-columns", action="store_true", help="every figure and the error (default: trial, status, accuracy, cost, searched knobs, on_front)")
    board.add_argument("--pareto-only", action="store_true", help="show only trials on the accuracy/cost front")
    board.add_argument("--csv", default=None, help="also write the table to this CSV file")
    board.add_argument("--json", default=None, help="also write the table to this JSON file")
    board.set_defaults(handler=cmd_leaderboard)

    listing = commands.add_parser("list", help="what is registered: models, losses, datasets, compressors, policies or searchers, with one line each")
    listing.add_argument("kind", help="models, losses, datasets, compressors, policies or searchers")
    listing.set_defaults(handler=cmd_list)

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
