"""`dtrain` command line. Heavy imports (torch, recipes) happen inside the commands, not here."""

from __future__ import annotations

import argparse
import os
import sys

from dtrain.messages import plain, user_traceback

EXIT_CONFIG = 2
EXIT_FAILED = 1
DEBUG_ENV = "DTRAIN_DEBUG"


class UsageError(RuntimeError):
    """A command given something it cannot use; the message says what to give instead (exit 2)."""


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"dtrain: error: {message}", file=sys.stderr, flush=True)
    return code


def version() -> str:
    """The installed distribution's version, else the package's own (a checkout on PYTHONPATH)."""
    from importlib import metadata

    try:
        return metadata.version("dtrain")
    except metadata.PackageNotFoundError:
        import dtrain

        return getattr(dtrain, "__version__", "unknown")


class _Version(argparse.Action):
    """--version: looked up only when asked for, so building the parser stays as cheap as --help."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"dtrain {version()}", flush=True)
        parser.exit()


def _load(config: str, overrides: list[str]):
    from dtrain.config import load_config

    return load_config(config, overrides)


def _preflight(cfg) -> None:
    from dtrain.config_changes import check_before_start
    from dtrain.preflight import check_device_support, check_output_dir, check_recipe_data, check_resume_path
    from dtrain.runlock import check_free

    check_device_support(cfg)
    check_free(cfg.output_dir)
    check_resume_path(cfg)
    check_before_start(cfg)
    check_recipe_data(cfg)
    check_output_dir(cfg.output_dir)


def cmd_run(args: argparse.Namespace) -> int:
    from dtrain.dist import read_env
    from dtrain.runner import train

    cfg = _load(args.config, args.overrides)
    if read_env().launcher == "single":  # under torchrun, `dtrain launch` has checked already
        _preflight(cfg)
    train(cfg)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from dtrain.launch import LaunchSpec, resolve_nproc, run_torchrun, torchrun_argv
    from dtrain.preflight import check_nproc, check_rendezvous_port
    from dtrain.redact import redact_overrides

    if args.replica_groups:
        return _launch_replica_groups(args)
    cfg = _load(args.config, args.overrides)  # every config error surfaces here, before any process starts
    nproc = resolve_nproc(args.nproc_per_node)
    import torch

    check_nproc(nproc, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    check_rendezvous_port(args.rdzv_endpoint, args.node_rank)
    _preflight(cfg)
    spec = LaunchSpec(
        config=args.config,
        overrides=args.overrides,
        nproc_per_node=nproc,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id,
        max_restarts=args.max_restarts,
    )
    argv = torchrun_argv(spec)
    shown = torchrun_argv(LaunchSpec(**{**vars(spec), "overrides": redact_overrides(spec.overrides)}))
    print("[dtrain] " + " ".join(shown[1:]), flush=True)
    if args.dry_run:
        return 0
    return run_torchrun(argv[3:], cfg.output_dir)


def _launch_replica_groups(args: argparse.Namespace) -> int:
    from dtrain.ft_launch import run_replica_groups
    from dtrain.preflight import PreflightError

    if args.replica_groups < 1:
        raise PreflightError(f"--replica-groups must be >= 1, got {args.replica_groups}")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise PreflightError("--replica-groups over --nnodes > 1 needs --rdzv-endpoint HOST:PORT: where node rank 0 "
                             "runs the Lighthouse, reachable from every node")
    groups = args.replica_groups
    overrides = [*args.overrides, f"ft.replica_groups={groups}"]
    cfg = _load(args.config, [*overrides, "ft.enabled=true"])  # what the groups will run, checked here once
    _preflight(cfg)
    if args.dry_run:
        return 0
    return run_replica_groups(args.config, overrides, cfg.ft, cfg.output_dir, nnodes=args.nnodes,
                              node_rank=args.node_rank, endpoint=args.rdzv_endpoint)


def cmd_export(args: argparse.Namespace) -> int:
    from dtrain.checkpoint import export_model

    n = export_model(args.checkpoint, args.out)
    print(f"wrote {n} tensors to {args.out}")
    return 0


def _recipe_of(path: str, attr: str):
    """The recipe module behind a run directory (config.yaml) or an export (dtrain_export.json)."""
    import json
    from pathlib import Path

    from dtrain.config import read_yaml
    from dtrain.recipe import resolve_recipe

    p = Path(path)
    if (p / "dtrain_export.json").is_file():
        name = json.loads((p / "dtrain_export.json").read_text())["recipe"]
    elif (p / "config.yaml").is_file():
        name = read_yaml(p / "config.yaml").get("recipe", "")
    else:
        what = "does not exist" if not p.exists() else "is neither a run directory (config.yaml) nor an export (dtrain_export.json)"
        raise UsageError(f"{p} {what}; give the output_dir of a run or a directory `dtrain export` wrote")
    module = resolve_recipe(name)
    if not hasattr(module, attr):
        raise UsageError(f"recipe {name!r} has no `{attr}`; use `dtrain checkpoint export` for plain weights")
    return getattr(module, attr)


def _libraries_to_stderr():
    """export/predict print JSON on stdout for scripts to parse, but libraries imported on the way
    print banners there (DeepSpeed's logger does when transformers finds Accelerate): send them to
    stderr. A logger created during the import keeps that stream."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def cmd_recipe_export(args: argparse.Namespace) -> int:
    import json

    with _libraries_to_stderr():
        meta = _recipe_of(args.run_dir, "export")(args.run_dir, args.out, checkpoint=args.checkpoint)
    print(json.dumps({"out": args.out, **meta}, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    texts = bool(args.texts or args.file)
    if texts and args.images:
        raise UsageError("give ticket texts (or --file FILE) or --images PATH..., not both")
    if args.texts and args.file:
        raise UsageError("give ticket texts or --file FILE (one of the two)")
    if not texts and not args.images:
        raise UsageError("give what to predict: ticket texts or --file FILE (text models), --images PATH... "
                         "(image models)")
    out = sys.stdout
    with _libraries_to_stderr():
        predict = _recipe_of(args.source, "predict")
        if args.images:  # a recipe's predict that takes images has an `images` argument
            try:
                rows = predict(args.source, images=args.images)
            except TypeError as exc:
                if "unexpected keyword argument 'images'" not in str(exc):
                    raise
                raise UsageError(f"{args.source} is a text model: give ticket texts or --file FILE, not --images") from None
        else:  # an image model given texts says so itself
            rows = predict(args.source, args.texts, file=args.file)
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), file=out, flush=True)
    return 0


def cmd_slurm_submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dtrain.slurm import SlurmJob, render, submit, whole_numbers

    # Bad flags are bad input like a bad config key: one line naming each, before the config is read.
    numbers, problems = whole_numbers({key: getattr(args, key) for key in SlurmJob.COUNTS})
    job = SlurmJob(
        config=args.config, overrides=args.overrides, run_dir=Path(), **numbers,
        time=args.time, partition=args.partition, account=args.account, qos=args.qos,
        job_name=args.job_name, launcher=args.launcher,
    )
    problems += job.check()
    if problems:
        raise UsageError("; ".join(problems))
    # Config errors surface before anything is queued; with replica groups, in the config the groups will run.
    ft = ["ft.enabled=true", f"ft.replica_groups={job.replica_groups}"] if job.replica_groups else []
    cfg = _load(args.config, [*args.overrides, *ft])
    if not args.dry_run:
        _preflight(cfg)
    job.run_dir = Path(cfg.output_dir)
    script = render(job)
    if args.dry_run:
        print(script, end="")
        return 0
    job.run_dir.mkdir(parents=True, exist_ok=True)
    path = job.run_dir / "job.sbatch"
    path.write_text(script)
    job_id = submit(path)
    print(job_id)
    print(f"[dtrain] submitted {path} as job {job_id}; logs: {job.run_dir.resolve()}/slurm-{job_id}.out", file=sys.stderr)
    return 0


def cmd_slurm_env(args: argparse.Namespace) -> int:
    from dtrain.slurm import allocation

    alloc = allocation()
    if alloc is None:
        print("not inside a Slurm allocation (no SLURM_JOB_ID); use `dtrain slurm submit` to queue a job")
        return 1
    print(f"job {alloc.job_id}: {alloc.num_nodes} node(s) {','.join(alloc.nodes)}, {alloc.tasks} task(s), "
          f"GPUs per node: {alloc.gpus_per_node or 'none'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dtrain.plot import plot_runs

    runs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / "plots" if len(runs) == 1 else Path("plots"))
    for path in plot_runs(runs, out):
        print(path)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from dtrain.plan import Cluster, plan, render, to_json

    cluster = Cluster.parse(args.nodes, args.gpus_per_node, args.gpu_memory, args.fs_bandwidth, args.device)
    cfg = _load(args.config, args.overrides)
    with _libraries_to_stderr():  # --json on stdout stays parseable
        result = plan(cfg, cluster, args.config)
    print(json.dumps(to_json(result), indent=1) if args.json else render(result))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import json

    from dtrain.envinfo import collect, render

    info = collect()
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dtrain", description="Distributed training: one YAML, any launcher.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks (also after the command: dtrain run --debug)")
    p.add_argument("--version", action=_Version, help="print dtrain's version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    # --debug after the command works too; SUPPRESS keeps a subcommand's default from hiding the global flag.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[debug, *k.pop("parents", [])], **k)  # type: ignore[method-assign]

    run = sub.add_parser("run", help="train in this process (single process, or one rank under torchrun/srun)")
    run.add_argument("config", help="YAML config file")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=64")
    run.set_defaults(fn=cmd_run)

    la = sub.add_parser("launch", help="start torchrun with this config on this node")
    la.add_argument("--nproc-per-node", default="auto", help="processes on this node: N or auto (GPUs, else 2)")
    la.add_argument("--nnodes", type=int, default=1)
    la.add_argument("--node-rank", type=int, default=0)
    la.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (multi-node)")
    la.add_argument("--rdzv-id", default=os.environ.get("SLURM_JOB_ID", "dtrain"), help="job id shared by all nodes")
    la.add_argument("--max-restarts", type=int, default=0, help="times torchrun restarts a failed group")
    la.add_argument("--replica-groups", type=int, default=0, metavar="R",
                    help="fault tolerance (torchft): R replica groups of one process (one GPU each); a lost one is "
                         "restarted and heals from a live one while the others go on. With --nnodes N: this node "
                         "runs groups node-rank, node-rank+N, ...; node rank 0 runs the Lighthouse at "
                         "--rdzv-endpoint (docs/fault-tolerance.md)")
    la.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    la.add_argument("config")
    la.add_argument("overrides", nargs="*")
    la.set_defaults(fn=cmd_launch)

    ck = sub.add_parser("checkpoint", help="checkpoint tools")
    cksub = ck.add_subparsers(dest="checkpoint_command", required=True)
    ex = cksub.add_parser("export", help="write a checkpoint's model weights as one safetensors file")
    ex.add_argument("checkpoint", help="a step_* directory, or a checkpoints/ directory (newest is used)")
    ex.add_argument("out", help="output .safetensors path")
    ex.set_defaults(fn=cmd_export)

    rx = sub.add_parser("export", help="export a run's best model for serving (the recipe's format, e.g. HF + ONNX)")
    rx.add_argument("run_dir")
    rx.add_argument("out", help="output directory")
    rx.add_argument("--checkpoint", default="best", help="best (default), latest, or a step_* directory")
    rx.set_defaults(fn=cmd_recipe_export)

    pr = sub.add_parser("predict", help="route texts or classify images with an exported model or a run directory")
    pr.add_argument("source", help="export directory or run directory")
    pr.add_argument("texts", nargs="*", help="ticket texts")
    pr.add_argument("--file", help=".txt (one per line), .csv or .jsonl (a 'text' column) of tickets")
    pr.add_argument("--images", nargs="+", metavar="PATH",
                    help="image models: .png/.jpg files, or directories (every image inside, sorted)")
    pr.set_defaults(fn=cmd_predict)

    sl = sub.add_parser("slurm", help="Slurm: submit a config as an sbatch job, or show the allocation")
    slsub = sl.add_subparsers(dest="slurm_command", required=True)
    sb = slsub.add_parser("submit", help="render slurm/*.sbatch for this config into the run directory and sbatch it")
    # Values are checked by the command (dtrain.slurm), not by argparse: a bad one is one line, exit 2.
    sb.add_argument("--nodes", default=1)
    sb.add_argument("--gpus-per-node", default=0)
    sb.add_argument("--procs-per-node", default=None, help="default: one per GPU, or 1")
    sb.add_argument("--cpus-per-task", default=None)
    sb.add_argument("--time", default="01:00:00", help="time limit, e.g. 30, 04:00:00, 1-00:00:00")
    sb.add_argument("--partition")
    sb.add_argument("--account")
    sb.add_argument("--qos")
    sb.add_argument("--job-name", default="dtrain")
    sb.add_argument("--launcher", default="torchrun",
                    help="torchrun (default): one task per node runs torchrun; srun: one task per process")
    sb.add_argument("--signal-lead", dest="signal_lead_s", default=90, help="seconds before the time limit to checkpoint")
    sb.add_argument("--max-requeues", default=3, help="requeues after a checkpointed stop, at most")
    sb.add_argument("--replica-groups", default=0, help="fault tolerance (torchft): R replica groups over the "
                    "nodes, a lost one healed without a restart (docs/fault-tolerance.md); 0: off")
    sb.add_argument("--dry-run", action="store_true", help="print the script; submit nothing")
    sb.add_argument("config")
    sb.add_argument("overrides", nargs="*")
    sb.set_defaults(fn=cmd_slurm_submit)
    se = slsub.add_parser("env", help="nodes, tasks and GPUs of the Slurm allocation this runs in")
    se.set_defaults(fn=cmd_slurm_env)

    pl = sub.add_parser("plot", help="PNGs of loss, lr and evaluation metrics against step (several runs: compared)")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    pl.add_argument("--out", help="output directory (default: RUN_DIR/plots for one run, ./plots for several)")
    pl.set_defaults(fn=cmd_plot)

    pn = sub.add_parser("plan", help="memory per GPU and checkpoint cost of a config for ddp, fsdp and ZeRO 1/2/3 "
                                     "at a given scale (measured on fake tensors; nothing is allocated)")
    pn.add_argument("config", help="YAML config file")
    pn.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=8")
    pn.add_argument("--nodes", default="1", help="nodes (default 1)")
    pn.add_argument("--gpus-per-node", required=True, help="GPUs (ranks) per node")
    pn.add_argument("--gpu-memory", default=None, help="memory per GPU, e.g. 80GB or 141GiB (default 80GB)")
    pn.add_argument("--fs-bandwidth", default=None,
                    help="checkpoint read/write bandwidth per node, e.g. 2GB/s (default 1GB/s)")
    pn.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cuda (default): GPU memory; cpu: every row is the rank's host memory (gloo runs)")
    pn.add_argument("--json", action="store_true", help="machine-readable output")
    pn.set_defaults(fn=cmd_plan)

    en = sub.add_parser("env", help="versions, GPUs and distributed environment variables, for bug reports")
    en.add_argument("--json", action="store_true", help="machine-readable output")
    en.set_defaults(fn=cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `dtrain launch --debug` reaches its ranks through the environment torchrun hands them.
    args.debug = args.debug or os.environ.get(DEBUG_ENV) == "1"
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    from dtrain.config import ConfigError
    from dtrain.preflight import PreflightError, safe_umask
    from dtrain.runlock import RunLocked

    safe_umask()

    try:
        return args.fn(args)
    except ConfigError as exc:
        if args.debug:
            raise
        where = f" ({exc.source})" if exc.source else ""
        for problem in exc.problems:
            print(f"dtrain: config error{where}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except (PreflightError, RunLocked, UsageError) as exc:  # bad input found before anything started: like a config error
        if args.debug:
            raise
        return _fail(str(exc), EXIT_CONFIG)
    except KeyboardInterrupt:
        return _fail("interrupted; a rerun of the same command continues from the newest complete checkpoint", 130)
    except Exception as exc:  # one clear line; --debug shows the traceback
        from dtrain.preemption import Preempted, exit_code_of_stop

        if isinstance(exc, Preempted):  # checkpointed on request: the batch script requeues on this code
            code = exit_code_of_stop(exc)
            if code or os.environ.get("RANK", "0") == "0":  # under `dtrain launch`, which reports it too: once
                print(f"dtrain: {exc}", file=sys.stderr, flush=True)
            return code
        if args.debug:
            raise
        code = EXIT_CONFIG if getattr(exc, "bad_input", False) else EXIT_FAILED  # e.g. a resume's changed settings
        if getattr(exc, "echo", False):  # another rank's failure, which that rank reports
            return code
        user = user_traceback(exc)
        if user:  # a bug in the user's code: where it happened is the message
            print(f"dtrain: error in your code (dtrain's and libraries' frames left out; --debug shows all):\n{user}",
                  file=sys.stderr, end="", flush=True)
            return code
        return _fail(plain(exc), code)


if __name__ == "__main__":
    sys.exit(main())
