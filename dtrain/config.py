"""Typed run configuration: YAML file + dotted ``key=value`` overrides -> dataclasses.

Every problem in a config is collected before anything starts (torchtune's habit), and each is
reported on one line that names the key, so a user fixes the whole file in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot run; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"config error{where}: " + "; ".join(problems))


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = 1
    """Passes over the training set; the run ends at whichever of epochs / max_steps comes first."""
    max_steps: int | None = None
    """Optimizer steps to run in total (None: as many as `epochs` give). 0: set up (build, shard and place
    the model, make the optimizer) and stop: a quick check of a configuration and its memory (memory.json)."""
    batch_size: int = 32
    """Micro-batch size per rank. Global batch = batch_size * grad_accum_steps * world size."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; gradients are synchronised only on the last one."""
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    """fp16 uses a GradScaler; bf16 autocasts (on CPU too); auto: bf16 on GPUs with bf16 in hardware (compute
    capability 8.0+: A100, H100, L4, ...), else fp32 (also on V100/T4, which only emulate bf16)."""
    grad_clip: float | None = 1.0
    """Max global gradient norm (None or 0 disables clipping)."""
    compile: bool | str = False
    """torch.compile the model: false, true, or a mode such as 'max-autotune'."""
    deterministic: bool = False
    """Deterministic GPU kernels (torch.use_deterministic_algorithms, cuDNN deterministic without its
    benchmark, CUBLAS_WORKSPACE_CONFIG=:4096:8), so that a run and its resume repeat bit for bit on GPUs
    too (the CPU always does). The cost: slower steps (cuDNN's fastest algorithms and some atomics-based
    kernels are out), about 24 MiB more GPU memory for cuBLAS, and an op without a deterministic kernel
    stops the run with an error naming it."""
    tf32: bool = True
    """fp32 matrix products and convolutions on TF32 tensor cores (GPUs from Ampere on): several times
    faster, inputs rounded to a 10-bit mantissa, as the MFU peak assumes. false: full fp32 arithmetic.
    No effect on the CPU, nor inside bf16/fp16 autocast."""
    cudnn_benchmark: bool | Literal["auto"] = "auto"
    """Time cuDNN's convolution algorithms for each new input shape and keep the fastest (convnets on GPUs).
    auto: on, unless train.deterministic (the choice can change the rounding from run to run)."""
    log_every: int = 10
    """Optimizer steps between metric lines."""
    eval_every: int | None = None
    """Optimizer steps between evaluations (None: at the end of every epoch)."""
    sanity_eval_batches: int = 2
    """Validation batches evaluated before the first step, so that a recipe's evaluation mistakes (and a
    checkpoint.best_metric / early_stopping.metric it does not give) stop the run in seconds (0: off)."""
    group_by_length: int = 0
    """Batch samples of about the same length, so that padding each batch to its longest wastes little
    (text): the epoch's shuffled order is sorted by length within each window of this many samples (1024
    is a good start; keep it well below the training set's size, else every epoch runs longest to
    shortest; 0: off). The windows count samples, not batches, so a step's samples are still the
    same at any world size. Needs training data that says its samples' lengths (a `lengths` attribute;
    the ticket router's in-memory data does); not with sharded data.
    The batches of a window go from long to short, and each holds tickets of one length: measure it on
    your validation split before relying on it (ticket router: SWEEP.md)."""
    num_workers: int | Literal["auto"] = 0
    """DataLoader worker processes per rank; auto: 0 on the CPU (ranks already use the cores), 2 with CUDA."""
    on_nonfinite: Literal["skip", "stop", "off"] = "skip"
    """A NaN/Inf loss or gradient: skip that update (stop after max_nonfinite_in_a_row), stop at once, or
    off (no check). The check costs no host sync: the decision stays on the GPU and is read at log steps."""
    max_nonfinite_in_a_row: int = 5
    """Skipped updates in a row after which the run stops with nonfinite_report.json."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device, the denominator of MFU (None: looked up for known GPUs by name and
    precision; on the CPU and unknown GPUs MFU is then left out and only achieved TFLOP/s logged)."""

    def check(self) -> list[str]:
        bad = []
        if self.sanity_eval_batches < 0:
            bad.append(f"train.sanity_eval_batches: must be >= 0, got {self.sanity_eval_batches}")
        if self.group_by_length < 0:
            bad.append(f"train.group_by_length: must be >= 0 (0: off), got {self.group_by_length}")
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every", "max_nonfinite_in_a_row"):
            if getattr(self, name) <= 0:
                bad.append(f"train.{name}: must be > 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 0:
            bad.append(f"train.max_steps: must be >= 0 or null, got {self.max_steps}")
        if self.eval_every is not None and self.eval_every <= 0:
            bad.append(f"train.eval_every: must be > 0 or null, got {self.eval_every}")
        if self.grad_clip is not None and self.grad_clip < 0:
            bad.append(f"train.grad_clip: must be >= 0 or null, got {self.grad_clip}")
        if isinstance(self.num_workers, int) and self.num_workers < 0:
            bad.append(f"train.num_workers: must be >= 0, got {self.num_workers}")
        if self.peak_flops is not None and self.peak_flops <= 0:
            bad.append(f"train.peak_flops: must be > 0 or null, got {self.peak_flops}")
        if self.deterministic and self.cudnn_benchmark is True:
            bad.append("train.cudnn_benchmark: true contradicts train.deterministic (the fastest algorithm can "
                       "change between runs); set it to auto or false")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            bad.append(f"train.compile: unknown mode {self.compile!r}; use true, false or one of {sorted(COMPILE_MODES)}")
        return bad


COMPILE_MODES = {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"}


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    """adamw (fused AdamW: betas, decoupled weight decay) or sgd (with momentum)."""
    lr: float = 1e-3
    """Peak learning rate, reached at the end of warmup."""
    weight_decay: float = 0.0
    """Weight decay of the matrices (parameters of 2+ dimensions); biases and norm weights take none."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    momentum: float = 0.9
    """SGD momentum."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to `lr`."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup, down to lr * min_lr_ratio at the last step."""
    min_lr_ratio: float = 0.0
    """Where the decay ends, as a fraction of `lr` (0: down to zero; ignored by schedule constant)."""

    def check(self) -> list[str]:
        bad = []
        if self.lr <= 0:
            bad.append(f"optim.lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            bad.append(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            bad.append(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad.append(f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            bad.append(f"optim.betas: each must be in [0, 1), got {list(self.betas)}")
        return bad


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int | None = None
    """Save every N optimizer steps (None: only at epoch ends and at the end of the run)."""
    every_epoch: bool = True
    """Save at the end of every epoch."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are pruned (the best is always kept)."""
    best_metric: str | None = None
    """Evaluation metric whose best value is kept apart, e.g. 'accuracy' or 'val_loss'."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a higher (max: accuracy) or lower (min: val_loss) best_metric is better."""
    resume: str = "auto"
    """'auto' (newest complete checkpoint in output_dir, or start fresh), 'none', or a checkpoint path."""
    allow_changes: bool = False
    """Resume a checkpoint with settings that change results (learning rate, epochs, model, data...)
    other than those it was written with. Without it such a resume is refused, naming the keys."""
    async_save: bool = False
    """YAML key `async` (`async_save` also accepted): write the checkpoint in the background while training
    goes on (torch.distributed.checkpoint); the next save waits for it. Not with strategy deepspeed."""
    format: Literal["auto", "torch", "dcp"] = "auto"
    """torch: one model.pt/optim.pt (replicated DDP state); dcp: torch.distributed.checkpoint, every rank
    writes its shard. auto: dcp for fsdp or async saves, else torch. (deepspeed always uses its own.)"""

    def check(self) -> list[str]:
        bad = []
        if self.every_steps is not None and self.every_steps <= 0:
            bad.append(f"checkpoint.every_steps: must be > 0 or null, got {self.every_steps}")
        if self.keep_last < 1:
            bad.append(f"checkpoint.keep_last: must be >= 1, got {self.keep_last}")
        return bad


@dataclass(kw_only=True)
class EarlyStoppingConfig:
    metric: str | None = None
    """Evaluation metric to watch, e.g. 'val_loss' (None: no early stopping)."""
    mode: Literal["min", "max"] = "min"
    """Whether the metric improves downwards (min: val_loss) or upwards (max: accuracy)."""
    patience: int = 2
    """Evaluations in a row without improvement before the run stops."""
    min_delta: float = 0.0
    """An evaluation counts as an improvement only when it beats the best so far by more than this."""

    def check(self) -> list[str]:
        return [f"early_stopping.patience: must be >= 1, got {self.patience}"] if self.patience < 1 else []


@dataclass(kw_only=True)
class DistConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    timeout_s: float = 600.0
    """Process-group timeout (NCCL and gloo): how long a collective may wait before the job fails."""
    watchdog_timeout_s: float | None = 300.0
    """Seconds without progress in a step, evaluation or collective before every rank dumps its stack,
    hang_report.json names the stuck rank(s) and the job exits (null: off). Start-up, the first step,
    checkpoint writes and every torch.compile (recompiles too, at any step) get max(this, timeout_s)."""

    def check(self) -> list[str]:
        bad = [f"dist.timeout_s: must be > 0, got {self.timeout_s}"] if self.timeout_s <= 0 else []
        if self.watchdog_timeout_s is not None and self.watchdog_timeout_s <= 0:
            bad.append(f"dist.watchdog_timeout_s: must be > 0 or null, got {self.watchdog_timeout_s}")
        return bad


@dataclass(kw_only=True)
class LoggingConfig:
    """Where metrics go besides metrics.jsonl (always written) and the console (rank 0 only)."""

    wandb: bool = False
    """Log to Weights & Biases from rank 0 (pip install 'dtrain[wandb]'; WANDB_MODE=offline works).
    The run id is kept in <output_dir>/wandb_run_id, so a restarted or requeued job resumes the same run."""
    tensorboard: bool = False
    """Write TensorBoard event files to <output_dir>/tensorboard."""
    project: str = "dtrain"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team or user); None: your default."""
    run_name: str | None = None
    """Run name in wandb (None: the output_dir's name)."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""
    progress: Literal["auto", "bar", "lines"] = "auto"
    """auto: a progress bar when stdout is a terminal, plain lines every log_every steps when it is not
    (Slurm logs, pipes)."""


@dataclass(kw_only=True)
class ProfileConfig:
    """torch.profiler trace of a few optimizer steps into <output_dir>/profile/."""

    start: int | None = None
    """First optimizer step to record (None: no profiling). Skip a few: the first steps are warm-up."""
    steps: int = 3
    """Optimizer steps recorded."""
    ranks: list[int] = field(default_factory=lambda: [0])
    """Ranks that record a trace."""

    def check(self) -> list[str]:
        bad = []
        if self.start is not None and self.start < 1:
            bad.append(f"profile.start: must be >= 1 (optimizer steps count from 1), got {self.start}")
        if self.steps < 1:
            bad.append(f"profile.steps: must be >= 1, got {self.steps}")
        return bad


@dataclass(kw_only=True)
class DDPConfig:
    """strategy: ddp (DistributedDataParallel)."""

    broadcast_buffers: bool | Literal["auto"] = "auto"
    """Send rank 0's buffers to every rank before each forward. auto: only for a model with batch norm,
    whose running statistics change in training; other buffers (position ids, rotary tables) are constants,
    and broadcasting them would be a collective every step for nothing."""


@dataclass(kw_only=True)
class FSDPConfig:
    """strategy: fsdp (FSDP2, `torch.distributed.fsdp.fully_shard`)."""

    reshard_after_forward: bool = True
    """Free gathered parameters after forward (ZeRO-3-like); false keeps them to backward (ZeRO-2-like)."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in CPU memory (CUDA runs only)."""
    activation_checkpointing: bool = False
    """Recompute each shard unit's activations in backward instead of storing them."""
    sync_every_microbatch: bool = True
    """With train.grad_accum_steps > 1: reduce-scatter the gradients after every micro-batch, so each rank
    accumulates only its shard of them (gradient memory params/ranks, in CPU memory with cpu_offload),
    at the price of one reduce-scatter per micro-batch instead of one per step (torchtitan's way). false
    reduces once, on the window's last micro-batch, but every rank then holds every parameter's whole
    fp32 gradient on the device through the window: DDP's gradient memory, for less communication."""


@dataclass(kw_only=True)
class DeepSpeedConfig:
    """strategy: deepspeed (ZeRO through `deepspeed.initialize`). Batch sizes, accumulation, clipping,
    precision, optimizer and schedule come from dtrain's own keys."""

    stage: Literal[1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Optimizer state and step on the CPU (ZeRO-Offload; stage 1-3)."""
    offload_params: bool = False
    """Parameters on the CPU between uses (stage 3 only)."""
    config: str | None = None
    """A DeepSpeed JSON file for what dtrain does not cover; a key that contradicts dtrain's is an error."""


@dataclass(kw_only=True)
class FaultInjectionConfig:
    """Deliberate failures, for testing resume and atomicity. Leave unset in real runs."""

    crash_after_step: int | None = None
    """Raise after this optimizer step (and its checkpoint, if one is due)."""
    kill_during_save_at_step: int | None = None
    """SIGKILL this process half-way through writing the checkpoint of this step."""
    kill_at_step: int | None = None
    """SIGKILL rank `kill_rank` right after this optimizer step (and after its checkpoint, if one is due)."""
    kill_rank: int = 0
    """Under torchrun, the kills above fire only in the first attempt, so a restarted group can finish."""
    step_sleep_s: float = 0.0
    """Sleep after every step: makes a short test job last long enough to be signalled."""
    hang_at_step: int | None = None
    """Rank `hang_rank` sleeps for an hour inside this optimizer step (before its forward pass)."""
    hang_rank: int = 0
    """The rank that hangs at `hang_at_step`."""
    nan_loss_at_steps: list[int] = field(default_factory=list)
    """Optimizer steps whose loss is made NaN on rank `nan_rank`."""
    nan_rank: int = 0
    """The rank whose loss is made NaN at `nan_loss_at_steps`."""
    kill_in_reduce_at_step: int | None = None
    """With ft: replica group `kill_rank` is SIGKILLed at this step while the other groups are inside the
    gradient reduction, waiting for its part (once: not after the launcher restarts it)."""
    disk_full_at_step: int | None = None
    """The checkpoint of this step fails part-way with ENOSPC, as on a full disk."""
    hold_at: str | None = None
    """'STEP:PHASE' (phase: data, forward, backward, optimizer, eval, checkpoint): when rank `hold_rank`
    reaches it (first micro-batch), it writes its pid to <output_dir>/.hold and pauses `hold_s` seconds,
    once per process, so that benchmarks/chaos.py can strike at that instant."""
    hold_rank: int = 0
    """The rank that pauses at `hold_at`."""
    hold_s: float = 3.0
    """Seconds the pause at `hold_at` lasts."""


@dataclass(kw_only=True)
class FtConfig:
    """Fault tolerance without restart (torchft; `pip install 'dtrain[ft]'`): replica groups that train the
    same model, a lost one costing the others at most one step, a restarted one healed from a live peer.
    Started by `dtrain launch --replica-groups R` (docs/fault-tolerance.md)."""

    enabled: bool = False
    """Train as one replica group of a fault-tolerant job (set by `dtrain launch --replica-groups`)."""
    replica_groups: int = 2
    """Groups the job runs with; the schedule's length and the nominal global batch are counted for them."""
    min_replicas: int = 1
    """Fewest live groups a step commits with; below it the survivors wait (for a restarted group)."""
    heartbeat_timeout_ms: int = 1000
    """A group silent this long is out of the next quorum: what a dead group costs the others (a stall)."""
    join_timeout_s: float = 60.0
    """At the start, how long the Lighthouse waits for every group before a quorum of fewer."""
    timeout_s: float = 10.0
    """A collective or a transfer between groups that takes longer is a fault: the step is discarded."""
    quorum_timeout_s: float = 60.0
    """How long a group waits for a quorum (longer than a restart takes, or a lone survivor gives up)."""
    quorum_retries: int = 3
    """Quorum requests retried before a group gives up (a restarted Lighthouse is found again)."""
    max_restarts: int = 3
    """Times the launcher restarts each group that died."""
    finish_grace_s: float = 30.0
    """Once a group has finished the job, how long the launcher waits for the others (a hung one) before
    killing them."""
    record_steps: bool = False
    """Write <output_dir>/replica_<g>/ft_steps.jsonl: every step's quorum, samples and a digest of the weights
    after it (what the proofs compare; costs a pass over the weights a step)."""

    def check(self) -> list[str]:
        bad = []
        if self.replica_groups < 1:
            bad.append(f"ft.replica_groups: must be at least 1, got {self.replica_groups}")
        if not 1 <= self.min_replicas <= max(self.replica_groups, 1):
            bad.append(f"ft.min_replicas: must be between 1 and ft.replica_groups ({self.replica_groups}), "
                       f"got {self.min_replicas}")
        for key in ("heartbeat_timeout_ms", "join_timeout_s", "timeout_s", "quorum_timeout_s"):
            if getattr(self, key) <= 0:
                bad.append(f"ft.{key}: must be positive, got {getattr(self, key)}")
        return bad


@dataclass(kw_only=True)
class RunConfig:
    recipe: str
    """Recipe to run: a name under recipes/ ('vision') or 'package.module[:function]'."""
    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl and checkpoints/ are written here."""
    seed: int = 0
    """Seeds model initialisation, the data order, per-sample randomness (augmentation) and each rank's RNGs:
    the same seed and config repeat a run exactly (on GPUs with train.deterministic)."""
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """How the model is spread over ranks: ddp (replicas), fsdp (FSDP2 sharding), deepspeed (ZeRO 1-3)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The loop: length, batch size and accumulation, precision, compile, logging and evaluation cadence."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When checkpoints are written, how many are kept, and how a run resumes."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Stop when an evaluation metric has not improved for a while (off unless `metric` is set)."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Device, process-group timeout and hang watchdog."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric loggers (wandb, TensorBoard) and the console's progress display."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    """A torch.profiler trace of a few steps (off unless `start` is set)."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    """Settings read only with strategy: ddp."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Settings read only with strategy: fsdp."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """Settings read only with strategy: deepspeed."""
    ft: FtConfig = field(default_factory=FtConfig)
    """Fault tolerance across replica groups (torchft): off unless `dtrain launch --replica-groups R`."""
    fault_injection: FaultInjectionConfig = field(default_factory=FaultInjectionConfig)
    """Failures on purpose, for the tests and benchmarks/chaos.py."""
    task: Any = None
    """Recipe-specific section, typed and checked by the recipe's own Config dataclass."""

    def check(self) -> list[str]:
        bad = []
        for part in (self.train, self.optim, self.checkpoint, self.early_stopping, self.dist, self.profile, self.ft,
                     self.task):
            if hasattr(part, "check"):
                bad += part.check()
        return bad + self._check_strategy() + self._check_ft()

    def _check_ft(self) -> list[str]:
        """What a replica group does not do yet, refused in one line each (docs/fault-tolerance.md)."""
        if not self.ft.enabled:
            return []
        bad = []
        if self.strategy != "ddp":
            bad.append(f"strategy: {self.strategy} inside a replica group (HSDP) is not supported with ft yet; "
                       "use strategy=ddp (one rank per group)")
        if self.checkpoint_format != "torch":
            bad.append("checkpoint.format: a replica group writes the torch format; set checkpoint.format=torch "
                       "and checkpoint.async=false")
        if self.early_stopping.metric:
            bad.append("early_stopping.metric: not available with ft yet; unset it")
        return bad

    def _check_strategy(self) -> list[str]:
        """Combinations dtrain does not support are refused here, in one line, rather than half-run."""
        bad, ck, tc = [], self.checkpoint, self.train
        if self.strategy == "fsdp":
            if tc.precision == "fp16":
                bad.append("train.precision: fp16 with strategy fsdp needs a sharded grad scaler dtrain does not "
                           "have; use bf16 or fp32")
            if ck.format == "torch":
                bad.append("checkpoint.format: torch cannot hold fsdp shards; use dcp or auto")
            if tc.compile:
                bad.append("train.compile: not supported with strategy fsdp yet; set train.compile=false")
        if self.strategy == "deepspeed":
            if ck.async_save:
                bad.append("checkpoint.async: not available with strategy deepspeed (it saves with its own "
                           "writer); set checkpoint.async=false")
            if ck.format != "auto":
                bad.append(f"checkpoint.format: {ck.format} is not used by strategy deepspeed (it writes its "
                           "own format); leave it at auto")
            if self.deepspeed.offload_params and self.deepspeed.stage != 3:
                bad.append(f"deepspeed.offload_params: needs deepspeed.stage=3, got stage {self.deepspeed.stage}")
            if tc.compile:
                bad.append("train.compile: not supported with strategy deepspeed yet; set train.compile=false")
            if self.deepspeed.offload_optimizer and self.optim.name != "adamw":
                bad.append(f"deepspeed.offload_optimizer: steps DeepSpeed's CPU Adam, but optim.name is "
                           f"{self.optim.name!r}; set optim.name=adamw or deepspeed.offload_optimizer=false")
        elif self.deepspeed.config is not None:
            bad.append(f"deepspeed.config: given, but strategy is {self.strategy}; set strategy=deepspeed")
        if ck.async_save and ck.format == "torch":
            bad.append("checkpoint.async: needs checkpoint.format dcp or auto (the torch format writes synchronously)")
        return bad

    @property
    def checkpoint_format(self) -> str:
        """The on-disk format this run writes: torch, dcp or deepspeed."""
        if self.strategy == "deepspeed":
            return "deepspeed"
        if self.checkpoint.format != "auto":
            return self.checkpoint.format
        return "dcp" if self.strategy == "fsdp" or self.checkpoint.async_save else "torch"


# --------------------------------------------------------------------------- parsing


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], 3e-4); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r}: expected key=value, e.g. train.batch_size=64"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError([f"override {text!r}: {part} is not a section"])
            node = nxt
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError([f"config file {path} is a directory; give the YAML file"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {path} cannot be read: {(exc.strerror or str(exc)).lower()}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start}); save it as UTF-8"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}{where}: malformed YAML ({problem})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping of keys, got {type(data).__name__}"])
    return data


def load_config(path: str | Path | None, overrides: list[str] = (), *, raw: dict | None = None,
                task_in_code: bool = False) -> RunConfig:
    """Read, override, type-check and validate a run config; raises ConfigError listing every problem.
    `task_in_code`: the task comes from Python (`dtrain.fit`), so `recipe` may be left out."""
    from dtrain.recipe import resolve_recipe  # late: recipes import the trainer's public API

    source = str(path) if path is not None else None
    try:
        data = read_yaml(path) if raw is None else dict(raw)
        data = apply_overrides(data, list(overrides))
    except ConfigError as exc:
        exc.source = exc.source or source
        raise
    problems: list[str] = []
    task_raw = data.pop("task", None)
    if "recipe" not in data and task_in_code:
        if task_raw:
            raise ConfigError(["task: settings for a recipe, but the task comes from your code (dtrain.fit); "
                               "set them there, or name the recipe"], source)
        data["recipe"] = ""
    if "recipe" not in data:
        raise ConfigError(["recipe: missing; name the recipe to run, e.g. recipe: vision"], source)
    ck = data.get("checkpoint")
    if isinstance(ck, dict) and "async" in ck:  # `async` is a Python keyword: the field is async_save
        ck["async_save"] = ck.pop("async")
    cfg = build_dataclass(RunConfig, data, "", problems)
    if cfg is not None and cfg.recipe == "" and task_in_code:
        pass  # no recipe: the task is given in code
    elif cfg is not None:
        try:
            recipe = resolve_recipe(cfg.recipe)
        except (ImportError, AttributeError) as exc:
            problems.append(f"recipe: cannot load {cfg.recipe!r}: {exc}")
        else:
            cfg.task = build_dataclass(recipe.Config, task_raw or {}, "task.", problems)
    if cfg is not None:
        problems += cfg.check()  # value checks too, so one pass reports everything
    if problems:
        raise ConfigError(problems, source)
    return cfg


# Names other libraries use for the same setting (HF Trainer, Lightning, DeepSpeed): suggested by name.
ALIASES = {
    "learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "max_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum_steps", "accumulate_grad_batches": "grad_accum_steps",
    "max_grad_norm": "grad_clip", "gradient_clipping": "grad_clip", "gradient_clip_val": "grad_clip",
    "per_device_train_batch_size": "batch_size", "train_micro_batch_size_per_gpu": "batch_size",
    "warmup": "warmup_steps", "scheduler": "schedule", "lr_scheduler_type": "schedule",
}


def build_dataclass(cls: type, data: Any, prefix: str, problems: list[str]):
    """Build `cls` from a dict, appending one line per unknown key, wrong type or missing field."""
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            alias = ALIASES.get(str(key))
            close = [alias] if alias in fields else difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            problems.append(f"{prefix}{key}: unknown key{hint}")
            continue
        if key == "task" and cls is RunConfig:
            continue
        ok, converted = coerce(value, hints[key], f"{prefix}{key}", problems)
        if ok:
            kwargs[key] = converted
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            problems.append(f"{prefix}{name}: missing (required)")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, problems: list[str]) -> tuple[bool, Any]:
    """Check `value` against annotation `tp`; returns (ok, value converted where that is lossless)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        # Try the most specific members first so `bool | str` keeps True as a bool.
        for member in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            sub: list[str] = []
            ok, out = coerce(value, member, key, sub)
            if ok:
                return True, out
        names = " or ".join(_type_name(a) if a is not type(None) else "null" for a in args)
        problems.append(f"{key}: expected {names}, got {value!r}")
        return False, None
    if origin is Literal:
        if value in args:
            return True, value
        problems.append(f"{key}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return False, None
    if dataclasses.is_dataclass(tp):
        # Keep the section even when some of its keys were bad, so its other values are checked too.
        out = build_dataclass(tp, value, key + ".", problems)
        return out is not None, out
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return False, None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                problems.append(f"{key}: expected {len(args)} values, got {len(value)}")
                return False, None
            items = list(zip(value, args))
        else:
            items = [(v, args[0] if args else Any) for v in value]
        out, ok = [], True
        for i, (v, t) in enumerate(items):
            good, conv = coerce(v, t, f"{key}[{i}]", problems)
            ok &= good
            out.append(conv)
        return ok, (tuple(out) if origin is tuple else out)
    if origin is dict:
        if isinstance(value, dict):
            return True, value
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return False, None
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return True, float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return True, value
    elif isinstance(tp, type) and isinstance(value, tp):
        return True, value
    problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return False, None


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (for config.yaml in the run directory)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, secrets (values under key/token/password-like names) masked."""
    from dtrain.redact import redact

    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)
