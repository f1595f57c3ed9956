"""Bad input: every row of the README's table, each with one clear line, a non-zero exit, no traceback,
and nothing in the run directory damaged. Real `dtrain` processes (and real torchrun where it matters)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from dtrain.preflight import PreflightError, check_nproc
from tests.conftest import dtrain, run
from tests.distributed.test_resume import CFG as MLP
from tests.integration.test_cli import SMALL_VISION, VISION, _image_folder

ROUTER = "recipes/ticket_router/config.yaml"


def one_line(proc, code: int, *needles: str) -> str:
    """The process failed with `code`, printed exactly one line on stderr, no traceback; returns it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: mlp\ntrain:\n  batch_size: [1, 2\n")
    one_line(dtrain("run", str(bad), check=False), 2, str(bad), "malformed YAML", "line")


def test_unknown_key(tmp_path):
    one_line(dtrain("run", MLP, "optim.learning_rate=1", check=False), 2, "optim.learning_rate: unknown key",
             "did you mean optim.")


def test_wrong_type(tmp_path):
    one_line(dtrain("run", MLP, "train.batch_size=big", check=False), 2, "train.batch_size: expected int, got 'big'")


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: must be > 0, got 0"),
    ("optim.lr=-0.1", "optim.lr: must be > 0, got -0.1"),
    ("train.grad_accum_steps=-2", "train.grad_accum_steps: must be > 0, got -2"),
])
def test_zero_or_negative_batch_lr_accumulation(tmp_path, override, message):
    out = tmp_path / "never"
    one_line(dtrain("launch", MLP, f"output_dir={out}", override, check=False), 2, message)
    assert not out.exists()


def _router(tmp_path, *overrides):
    out = tmp_path / "run"
    return dtrain("run", ROUTER, f"output_dir={out}", *overrides, check=False), out


def test_missing_data_file(tmp_path):
    proc, out = _router(tmp_path, f"task.data_path={tmp_path}/nope.csv")
    one_line(proc, 2, "nope.csv does not exist", "task.data_path")
    assert not out.exists()


def test_data_path_that_is_a_directory(tmp_path):
    proc, out = _router(tmp_path, f"task.data_path={tmp_path}")
    line = one_line(proc, 2, f"no JSONL, CSV, Parquet, .txt or .tar shards found at {tmp_path}", "task.data_path")
    assert "does not exist" not in line and not out.exists()


@pytest.mark.parametrize("command", [["export", "{missing}", "{tmp}/out"], ["predict", "{missing}", "a ticket"]])
def test_export_or_predict_from_a_directory_that_does_not_exist(tmp_path, command):
    args = [a.format(missing=tmp_path / "nope", tmp=tmp_path) for a in command]
    line = one_line(dtrain(*args, check=False), 2, f"{tmp_path / 'nope'} does not exist", "output_dir of a run")
    assert "Error" not in line and not (tmp_path / "out").exists()


def _csv(tmp_path, content: bytes, name="t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_csv_without_text_or_label_column(tmp_path):
    path = _csv(tmp_path, b"body,label\nhello,billing\nhi,account\n")
    one_line(_router(tmp_path, f"task.data_path={path}")[0], 2, str(path), "no 'text' column")


def test_empty_text(tmp_path):
    path = _csv(tmp_path, b"text,label\nhello,billing\n\"  \",account\n")
    one_line(_router(tmp_path, f"task.data_path={path}")[0], 2, f"{path} line 3: empty text")


def test_validation_label_unseen_in_training(tmp_path):
    from recipes.ticket_router.data import SHIPPED

    val = _csv(tmp_path, b"text,label\nmy parcel is late,shipping\nwhere is my refund,refunds\n", "val.csv")
    proc, out = _router(tmp_path, f"task.data_path={SHIPPED}", f"task.val_path={val}")
    one_line(proc, 2, f"{val} line 3: unknown label 'refunds'", "the training part of")
    assert not out.exists()


def test_non_utf8_bytes(tmp_path):
    path = _csv(tmp_path, b"text,label\nhello,billing\ncaf\xe9 au lait,account\n")
    one_line(_router(tmp_path, f"task.data_path={path}")[0], 2, str(path), "not UTF-8", "0xe9")


def test_unreadable_image(tmp_path):
    _image_folder(tmp_path / "images", broken=True)
    proc = run(VISION, *SMALL_VISION, "task.dataset=folder", f"task.root={tmp_path / 'images'}", "task.image_size=16",
               "train.batch_size=4", f"output_dir={tmp_path}/run", "task.val_fraction=0.5", check=False)
    # Found by the header pass before any rank starts: bad input, exit 2, the file named.
    one_line(proc, 2, "do not read as images", "broken.png", "remove or fix it")


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    one_line(dtrain("run", MLP, f"output_dir={blocker}/run", check=False), 2, f"output_dir {blocker}/run is not writable")
    if os.geteuid() != 0:  # root ignores permission bits; the file-in-the-way case above holds for everyone
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line(dtrain("run", MLP, f"output_dir={locked}/run", check=False), 2, "is not writable")


def test_full_disk_during_checkpoint_write(tmp_path):
    out = tmp_path / "run"
    args = [MLP, f"output_dir={out}", "checkpoint.every_steps=4", "checkpoint.best_metric=null"]
    run(*args, "train.max_steps=4")
    before = snapshot(out / "checkpoints")
    args.append("checkpoint.allow_changes=true")  # the run is extended: 4 steps, then 12
    proc = run(*args, "train.max_steps=12", "fault_injection.disk_full_at_step=8", check=False)
    one_line(proc, 1, "writing checkpoint", "step_00000008 failed: No space left on device",
             "step_00000004 is intact", "checkpoint.resume=auto")
    assert snapshot(out / "checkpoints") == before  # no half checkpoint, `latest` untouched
    assert "resumed from" in run(*args, "train.max_steps=12").stdout  # and the run goes on from step 4


@pytest.mark.slow
def test_rendezvous_port_already_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = dtrain("launch", "--nproc-per-node=2", f"--rdzv-endpoint=localhost:{port}", MLP,
                      f"output_dir={tmp_path}/run", check=False)
    one_line(proc, 2, f"rendezvous port {port} on localhost is already in use", "--rdzv-endpoint")
    assert not (tmp_path / "run").exists()


def test_more_processes_per_node_than_gpus():
    with pytest.raises(PreflightError, match=r"--nproc-per-node=4 but this node has 2 GPU\(s\)"):
        check_nproc(4, 2)
    check_nproc(2, 2)
    check_nproc(3, 0)  # CPU processes over gloo: any number


@pytest.mark.gpu
def test_more_processes_per_node_than_gpus_on_this_node():
    import torch

    n = torch.cuda.device_count()
    one_line(dtrain("launch", f"--nproc-per-node={n + 1}", MLP, check=False), 2, f"this node has {n} GPU(s)")


def test_resume_from_a_checkpoint_of_another_model(tmp_path):
    out = tmp_path / "run"
    run(MLP, f"output_dir={out}", "train.max_steps=3")
    before = snapshot(out / "checkpoints")
    proc = run(MLP, f"output_dir={out}", "task.hidden=32", check=False)
    one_line(proc, 2, "step_00000003 was written with other settings: task.hidden 64 -> 32",
             "checkpoint.allow_changes=true")
    proc = run(MLP, f"output_dir={out}", "task.hidden=32", "checkpoint.allow_changes=true", check=False)
    one_line(proc, 1, "model.pt does not fit this model", "size mismatch", "start a new output_dir")
    assert snapshot(out / "checkpoints") == before


@pytest.mark.parametrize("value, message", [("0", "--nproc-per-node must be >= 1, got 0"),
                                            ("two", "--nproc-per-node must be a positive integer or 'auto'")])
def test_bad_nproc_is_one_plain_line(value, message):
    line = one_line(dtrain("launch", f"--nproc-per-node={value}", MLP, check=False), 2, message)
    assert "Error" not in line  # no Python exception class names


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_deepspeed_fp16_on_the_cpu_is_refused_before_start(tmp_path):
    out = tmp_path / "never"
    line = one_line(dtrain("run", MLP, "strategy=deepspeed", "train.precision=fp16", f"output_dir={out}",
                           check=False), 2, "train.precision: fp16 with strategy deepspeed needs a GPU")
    assert "Error" not in line and not out.exists()


CLINC = "recipes/ticket_router/config_clinc150.yaml"


@pytest.mark.parametrize("overrides, message", [
    (["task.out_of_scope=none_such"], "task.out_of_scope: no ticket in recipes/ticket_router/data/clinc150/train.jsonl "
                                      "has the label 'none_such'"),
    (["task.domains={tmp}/missing.json"], "task.domains: {tmp}/missing.json cannot be read"),
    (["task.domains={tmp}/domains.json"], "task.domains: {tmp}/domains.json puts label 'refunds' in domain 'banking', "
                                          "but no ticket has that label"),
    (["task.abstain.max_misrouted=0.05"], "task.abstain: state exactly one target"),
    (["task.abstain.min_oos_recall=1.5"], "task.abstain.min_oos_recall: a share between 0 and 1, got 1.5"),
    (["task.out_of_scope=null"], "task.abstain.min_oos_recall: needs task.out_of_scope"),
])
def test_clinc150_settings_name_the_key(tmp_path, overrides, message):
    (tmp_path / "domains.json").write_text('{"banking": ["balance", "refunds"]}')
    out = tmp_path / "never"
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    one_line(dtrain("run", CLINC, f"output_dir={out}", *args, check=False), 2, message.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--time", "soon"], "--time: 'soon' is not a Slurm time limit: give MM, HH:MM:SS or D-HH:MM:SS"),
    (["--nodes", "0"], "--nodes: must be >= 1, got 0"),
    (["--nodes", "two"], "--nodes: must be a whole number, got 'two'"),
    (["--signal-lead=-5"], "--signal-lead: must be >= 0, got -5"),
    (["--launcher", "mpi"], "--launcher: must be torchrun or srun, got 'mpi'"),
    (["--job-name", "my job"], "--job-name: use letters, digits, '.', '_' or '-', got 'my job'"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_bad_slurm_submit_flags_are_one_plain_line(tmp_path, flags, message, dry_run):
    out = tmp_path / "never"
    proc = dtrain("slurm", "submit", *(["--dry-run"] if dry_run else []), *flags, MLP, f"output_dir={out}", check=False)
    line = one_line(proc, 2, message)
    assert "unexpected" not in line and "--debug" not in line and not out.exists() and not proc.stdout


def test_every_bad_slurm_submit_flag_is_named_at_once():
    line = one_line(dtrain("slurm", "submit", "--dry-run", "--cpus-per-task=0", "--time=soon", MLP, check=False), 2)
    assert "--cpus-per-task: must be >= 1, got 0; --time: 'soon'" in line


@pytest.mark.parametrize("command", ["run", "launch"])
def test_resume_from_a_path_that_does_not_exist(tmp_path, command):
    out, missing = tmp_path / "never", tmp_path / "runs" / "step_00000004"
    line = one_line(dtrain(command, MLP, f"output_dir={out}", f"checkpoint.resume={missing}", check=False), 2,
                    f"checkpoint.resume: {missing} does not exist",
                    "give auto (the newest checkpoint in output_dir), none (start fresh), or an existing checkpoint "
                    "directory")
    assert "unexpected" not in line and not out.exists()


def test_resume_from_a_file_names_it(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    one_line(run(MLP, f"output_dir={tmp_path / 'never'}", f"checkpoint.resume={tmp_path / 'model.pt'}", check=False),
             2, f"checkpoint.resume: {tmp_path / 'model.pt'} is a file, not a directory")
