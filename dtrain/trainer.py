"""The training loop. It reads top to bottom: fit -> epochs -> optimizer steps -> micro-batches.

Everything else (process groups, precision, samplers, checkpoints, logging, config) lives in its own
module; the Trainer only decides *when* each of them is used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import torch

from dtrain.checkpoint import CheckpointError, CheckpointManager, restore_rng
from dtrain.config import RunConfig, to_dict
from dtrain.config_changes import check_resume, record_config, result_settings
from dtrain.data import (
    BLOCK_ORDER_ABOVE,
    EvalSampler,
    SeededSamples,
    TrainSampler,
    accumulation_windows,
    batch_len,
    length_groups,
    make_loader,
    micro_batch_sizes,
    move_to,
)
from dtrain.dist import DistState, all_reduce_sum, describe_cpus, gather_objects
from dtrain.early_stopping import EarlyStopping
from dtrain.fault_injection import after_step, first_attempt, holding
from dtrain.loggers import MetricsLogger
from dtrain.metrics import StepMetrics, count_tokens, default_peak_flops, memory_peaks
from dtrain.model_init import ModelSource
from dtrain.nonfinite import NonFiniteGuard
from dtrain.preemption import Preempted, StopRequest
from dtrain.redact import redact
from dtrain.optim import build_optimizer, build_scheduler
from dtrain.precision import Precision
from dtrain.profiling import StepProfiler
from dtrain.recipe import Task
from dtrain.sanity import check_eval_stats, check_loss_is_mean, check_metrics, sanity_subset, warn_out_of_range
from dtrain.strategies import build_strategy
from dtrain.watchdog import Watchdog


class Trainer:
    def __init__(self, cfg: RunConfig, dist: DistState, task: Task):
        self.cfg, self.dist, self.task = cfg, dist, task
        tc = cfg.train
        self.run_dir = Path(cfg.output_dir)
        self.device = dist.device

        n_train = len(task.train_data)
        block_order = getattr(task.train_data, "block_order", False) or n_train > BLOCK_ORDER_ABOVE
        # The training order's arguments (checked before the model is built: a bad setting fails in seconds).
        self.order = dict(block_order=block_order, **length_groups(task.train_data, tc.group_by_length, block_order))
        self.precision = Precision(tc.precision, self.device)
        # The strategy (ddp, fsdp, deepspeed) builds the model where it belongs (sharded ones never whole
        # on a GPU), compiles and wraps it, and makes the optimizer. `self.model` is what evaluation and
        # checkpoints see, `self.train_model` what the loop calls.
        self.strategy = build_strategy(cfg, dist, self.precision, task)
        self.strategy.setup(ModelSource.of(task.model, task.model_skeleton, cfg.seed),
                            task.optimizer or (lambda m: build_optimizer(m, cfg.optim, task.lr_scale)))
        self.model, self.train_model, self.optimizer = self.strategy.model, self.strategy.train_model, self.strategy.optimizer
        self.ckpt_format = cfg.checkpoint_format

        workers = tc.num_workers
        if workers == "auto":
            workers = 2 if self.device.type == "cuda" else 0
        self.sampler = TrainSampler(n_train, dist.rank, dist.world_size, cfg.seed, keyed=True, **self.order)
        if self.sampler.per_rank() == 0:
            raise ValueError(f"the training set has {n_train} samples, fewer than the {dist.world_size} ranks")
        self.loader = make_loader(SeededSamples(task.train_data, cfg.seed), self.sampler, tc.batch_size, dist,
                                  workers, task.collate_fn)
        self._plan_steps(self._samples_per_rank())

        self.val_loader, self.test_loader = (
            make_loader(data, EvalSampler(len(data), dist.rank, dist.world_size), tc.batch_size, dist, workers,
                        task.collate_fn)
            if data is not None and len(data) > 0 else None
            for data in (task.val_data, task.test_data)
        )
        es = cfg.early_stopping
        self.early_stopping = EarlyStopping(es.metric, es.mode, es.patience, es.min_delta)

        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", dist, cfg.checkpoint.keep_last)
        # Loop position: everything a resume needs besides model/optimizer/RNG.
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches this rank drew in this epoch (since a resume, if any)
        self.sample_in_epoch = 0  # global position in the epoch: survives a change of world size
        self.best_value: float | None = None
        self.stopped_early = False
        self.last_saved_step = -1
        self.last_eval: dict[str, float] = {}
        self._warned: set[str] = set()  # metrics already said to be out of range

        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = MetricsLogger(self.run_dir, enabled=dist.is_main, logging_cfg=cfg.logging,
                                    run_config=redact(to_dict(cfg)), total_steps=self.total_steps)
        self.metrics = StepMetrics(self.device, dist.world_size,
                                   tc.peak_flops or default_peak_flops(self.device, self.precision.mode),
                                   compiled=bool(tc.compile))
        self.profiler = StepProfiler(cfg.profile, self.run_dir, dist, log=self.logger.info)
        self.stop_request = StopRequest(self.run_dir, dist)
        self.guard = NonFiniteGuard(tc.on_nonfinite, tc.max_nonfinite_in_a_row, self.run_dir, dist,
                                    window=tc.log_every, scaler=self.precision.scaler is not None)
        self.watchdog = Watchdog(self.run_dir, dist, cfg.dist.watchdog_timeout_s, slow_limit_s=cfg.dist.timeout_s,
                                 watch_compiles=bool(tc.compile))
        fi = cfg.fault_injection
        self.beat = self.watchdog.beat if not fi.hold_at or fi.hold_rank != dist.rank else \
            holding(self.watchdog.beat, fi.hold_at, fi.hold_s, self.run_dir)
        # Sum of loss * samples since the last log line (on the device: read only when logging), and samples.
        self._window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._window_n = 0
        self.settings = result_settings(cfg)
        for name, data in (("data.train", task.train_data), ("data.val", task.val_data)):
            if callable(getattr(data, "fingerprint", None)):  # a sharded data set: a resume on other data is refused
                self.settings[name] = data.fingerprint()
        self.setup_memory = memory_peaks(self.device)  # model built, sharded and placed; optimizer made

    # ================================================================== the loop
    def fit(self) -> dict[str, float]:
        """Train to the end (resuming first if there is a checkpoint); returns the last evaluation."""
        try:
            self.stop_request.clear_stale_marker()
            self.watchdog.start()
            self._start()
            self._sanity_eval()
            tc = self.cfg.train
            self.train_model.train()
            while self.step < self.total_steps and not self.stopped_early:
                self.sampler.set_epoch(self.epoch, start=self.sample_in_epoch)
                sizes = micro_batch_sizes(self.sampler.per_rank(), tc.batch_size)
                batches = iter(self.loader)
                for window in accumulation_windows(sizes, tc.grad_accum_steps):
                    # The profiler's window, and the FLOPs of the first step (counted once; a no-op after).
                    with self.profiler.step(self.step + 1), self.metrics.count_flops(sum(window)):
                        self._train_step(batches, window)
                    self._after_step(window)
                    if self.step >= self.total_steps or self.stopped_early:
                        break
            self.ckpt.finish()  # an async save still in flight completes before the run reports done
            self._write_memory_report()
            self.logger.info(f"done: {self.step} steps, {self.epoch} epochs, output in {self.run_dir}")
            if self.test_loader is not None:
                self.test()
            self._hook(self.task.hooks.at_end, self.model, self.step, self.last_eval)
            return self.last_eval
        except BaseException:
            # An async write in flight ends (left incomplete) before the caller tears down the process
            # group its thread is using: destroyed under it, the write fails in the middle, or hangs.
            self.ckpt.abandon()
            raise
        finally:
            self.profiler.close(self.step)
            self.watchdog.stop()
            self.stop_request.done()
            self.logger.close()
            self.strategy.close()

    def _train_step(self, batches: Iterator, window: list[int]) -> None:
        """One optimizer step over a window of micro-batches (gradient accumulation)."""
        if not self.model.training:  # after an evaluation; train() walks every module, so not every step
            self.train_model.train()
        step, fi, beat = self.step + 1, self.cfg.fault_injection, self.beat
        window_samples = sum(window)
        parts = []  # loss * n per micro-batch: few small tensor ops per step, as an overhead-bound loop needs
        tokens = 0
        for i, n in enumerate(window):
            beat(step, i, "data")
            t = time.perf_counter()
            batch = next(batches)
            self.metrics.wait_s += time.perf_counter() - t
            tokens += count_tokens(self.task, batch)
            batch = move_to(batch, self.device)
            if self.task.train_transform is not None:
                batch = self.task.train_transform(batch)
            assert batch_len(batch) == n, f"expected a micro-batch of {n}, got {batch_len(batch)}"
            beat(step, i, "forward")
            if fi.hang_at_step == step and fi.hang_rank == self.dist.rank and i == 0:
                time.sleep(3600)  # fault injection: a rank that never reaches the collective
            # Gradients are synchronised once per window, on its last micro-batch (see the strategy).
            with self.strategy.sync(last=i == len(window) - 1):
                with self.precision.autocast():
                    outputs = self.task.forward(self.train_model, batch)
                    loss = self.task.loss_fn(outputs, batch)
                if step in fi.nan_loss_at_steps and fi.nan_rank == self.dist.rank:
                    loss = loss * float("nan")  # fault injection
                beat(step, i, "backward")
                # loss_fn gives the mean over this micro-batch; weighting by n / window_samples makes
                # the summed gradient the mean over the whole window, also for a short last window.
                # Every rank has the same window sizes, so the average over ranks keeps it exact.
                self.strategy.backward(loss if n == window_samples else loss * (n / window_samples))
            parts.append(loss.detach().double() * n)
        step_loss = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
        self._window_loss += step_loss
        self._window_n += window_samples
        self.metrics.add(window_samples, tokens)

        beat(step, len(window), "optimizer")
        outcome = self.strategy.step(self.guard.enabled)  # decided on the device: no host sync
        self._grad_norm = outcome.norm
        if self.guard.enabled:
            self.guard.record(step, outcome.bad, step_loss / window_samples, outcome.params, outcome.param_bad)
        # The schedule follows the step count, applied or skipped, as with GradScaler's skipped steps.
        self.scheduler.step()
        self.strategy.zero_grad()

    def _after_step(self, window: list[int]) -> None:
        cc, tc = self.cfg.checkpoint, self.cfg.train
        self.step += 1
        self.batch_in_epoch += len(window)
        self.sample_in_epoch += sum(window) * self.dist.world_size  # every rank draws the same sizes
        epoch_end = self.sample_in_epoch >= self.sampler.end()
        if epoch_end:
            self.epoch += 1
            self.batch_in_epoch = self.sample_in_epoch = 0
        last = self.step >= self.total_steps
        self.logger.tick(self.step)
        due_log = self.step % tc.log_every == 0 or last
        due_eval = self.val_loader is not None and (
            (tc.eval_every and self.step % tc.eval_every == 0) or (tc.eval_every is None and epoch_end) or last)
        due_save = (cc.every_steps and self.step % cc.every_steps == 0) or (cc.every_epoch and epoch_end) or last
        # Where the loop syncs anyway, the guard reads the steps it recorded on the device (it may stop
        # the run here, before anything is saved after a bad step).
        if due_log or due_eval or due_save or self.guard.due(self.step):
            self.guard.check(self.step, self.model, self.logger.info)
        if due_log:
            self.beat(self.step, 0, "log")
            self._log_train()

        improved = False
        if due_eval:
            metrics = self.evaluate()
            warn_out_of_range(metrics, self._warned, lambda m: self.logger.info(f"warning: {m}"))
            self.last_eval = metrics
            self.logger.log({"step": self.step, "epoch": self.epoch, **metrics}, kind="eval")
            self._hook(self.task.hooks.after_eval, self.model, self.step, metrics)
            improved = self._is_improvement(metrics)
            # Every rank sees the same reduced metrics, so every rank takes the same decision.
            if self.early_stopping.update(metrics) and not last:
                self.stopped_early = last = True
                self.logger.info(
                    f"early stop at step {self.step}: {self.early_stopping.metric} has not improved for "
                    f"{self.early_stopping.patience} evaluations (best {self.early_stopping.best:.4g})"
                )

        if (due_save or improved or last) and self.last_saved_step != self.step:  # last: also an early stop
            path = self.save_checkpoint()
            if improved:
                self.ckpt.mark_best(path, cc.best_metric, self.best_value, self.step)

        reason = None
        if not last:  # the last step's save is completed by fit() itself
            steps_to_log = tc.log_every - self.step % tc.log_every
            reason = self.stop_request.agreed(self.device, self.step, steps_to_log, checkpoint_written=self.ckpt.written)
            # An async save that has ended on every rank becomes complete here, as the meeting found. Not
            # one begun at this step: a save never completes in the step that started it, so a crash
            # right after a save started always leaves it incomplete (what the crash tests rely on).
            if self.last_saved_step != self.step:
                self.ckpt.poll(self.stop_request.all_written)
        if reason:
            self.guard.check(self.step, self.model, self.logger.info)
            if self.last_saved_step != self.step:
                self.save_checkpoint()
            self.ckpt.finish()
            self.stop_request.record_stop(self.step)
            raise Preempted(f"stopped at step {self.step} on request ({reason}); checkpoint saved, run the same "
                            "command to continue", interrupted=reason == "SIGINT")

        after_step(self.cfg.fault_injection, self.step, self.dist.rank)

    # ================================================================== evaluation
    def _sanity_eval(self) -> None:
        """A few validation batches before the first step, their metrics checked (dtrain/sanity.py)."""
        n, data = self.cfg.train.sanity_eval_batches, self.task.val_data
        if not n or self.val_loader is None or self.step >= self.total_steps:
            return
        subset = sanity_subset(data, self.dist.rank, self.dist.world_size, self.cfg.train.batch_size, n)
        loader = make_loader(subset, EvalSampler(len(subset), 0, 1), self.cfg.train.batch_size, self.dist, 0,
                             self.task.collate_fn)
        watched = {"checkpoint.best_metric": self.cfg.checkpoint.best_metric,
                   "early_stopping.metric": self.cfg.early_stopping.metric}
        warn = lambda m: self.logger.info(f"warning: {m}")  # noqa: E731
        check_metrics(self.evaluate(loader), self.task, watched, warn)
        self.model.eval()
        try:
            check_loss_is_mean(self.task, self.model, move_to(next(iter(loader)), self.device),
                               self.precision.autocast, warn)
        finally:
            self.model.train()

    # no_grad, not inference_mode: the sanity evaluation runs before the first step, and the buffers FSDP
    # and ZeRO-3 allocate in a model's first forward would be inference tensors, unusable in training.
    def evaluate(self, loader=None) -> dict:
        """Loss and recipe metrics over the whole validation set (or `loader`), each sample counted once
        across ranks."""
        return self._summarize(self._eval_sums(loader or self.val_loader))

    # no_grad, not inference_mode: the sanity evaluation runs before the first step, and the buffers FSDP
    # and ZeRO-3 allocate in a model's first forward would be inference tensors, unusable in training.
    @torch.no_grad()
    def _eval_sums(self, loader) -> dict[str, torch.Tensor]:
        """The loss and the recipe's eval_stats over `loader`, summed over batches and reduced over ranks."""
        # The unwrapped model: evaluation needs no gradient sync, and DDP would broadcast buffers.
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        # Sharded parameters are gathered in forward, a collective: a rank with fewer batches repeats its
        # last one (uncounted) until every rank has run as many forward passes. Agreed before any forward.
        extra = self.strategy.extra_eval_passes(len(loader))
        batch = None
        for i, batch in enumerate(loader):
            self.beat(self.step, i, "eval")
            batch = move_to(batch, self.device)
            with self.precision.autocast():
                outputs = self.task.forward(self.model, batch)
                loss = self.task.loss_fn(outputs, batch)
            n = batch_len(batch)
            loss_sum += loss.double() * n
            count += n
            if self.task.eval_stats is not None:
                stats = self.task.eval_stats(outputs, batch)
                check_eval_stats(stats)
                for k, v in stats.items():
                    # A Python number or a CPU tensor is fine: sums live on the compute device, where
                    # the reduction (NCCL on GPUs) needs them.
                    v = torch.as_tensor(v).detach().to(self.device, torch.float64)
                    sums[k] = sums[k] + v if k in sums else v
        if extra and batch is None:  # fewer samples than ranks: this rank has none, and forwards anything
            batch = move_to(loader.collate_fn([loader.dataset[0]]), self.device)
        for _ in range(extra):
            with self.precision.autocast():
                self.task.forward(self.model, batch)
        self.model.train()
        return self._reduce_sums({"_loss": loss_sum, "_count": count, **sums})

    def _summarize(self, sums: dict[str, torch.Tensor]) -> dict:
        sums = dict(sums)
        metrics = {"val_loss": (sums.pop("_loss") / sums.pop("_count").clamp(min=1)).item()}
        if self.task.summarize is not None:
            metrics.update(self.task.summarize(sums))
        return metrics

    def test(self) -> dict:
        """Evaluate the best checkpoint (else the final model) on the held-out test split, once."""
        best = self.ckpt.best()
        if best is not None:
            # The weights only: the optimizer state (twice the model under AdamW) is never used here.
            loaded = self.ckpt.load(self.ckpt.root / best["checkpoint"], model_only=True)
            if loaded.model is not None:
                self.model.load_state_dict(loaded.model)
            else:
                self.strategy.load_model(loaded.path / "state")
        calibrate = self.task.calibrate if self.val_loader is not None else None
        val_sums = self._eval_sums(self.val_loader) if calibrate else None  # of this checkpoint
        sums = self._eval_sums(self.test_loader)
        metrics = self._summarize(sums)
        metrics = {"test_loss": metrics.pop("val_loss"), **metrics}
        if calibrate:
            strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
            metrics.update(calibrate(strip(val_sums), strip(sums)))
        source = best["checkpoint"] if best else f"step_{self.step:08d} (final)"
        self.logger.log({"step": self.step, "checkpoint": source, **metrics}, kind="test")
        if self.dist.is_main:
            report = {"checkpoint": source, "step": self.step, **metrics}
            (self.run_dir / "test_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return metrics

    def _reduce_sums(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # A rank whose shard was empty has no recipe keys; agree on keys and shapes first.
        shapes = gather_objects({k: tuple(v.shape) for k, v in sums.items()}, self.dist)
        merged = {k: s for d in shapes for k, s in d.items()}
        return {k: all_reduce_sum(sums[k] if k in sums else torch.zeros(merged[k]), self.dist, torch.float64)
                for k in sorted(merged)}

    def _is_improvement(self, metrics: dict[str, float]) -> bool:
        cc = self.cfg.checkpoint
        if not cc.best_metric:
            return False
        if cc.best_metric not in metrics:
            raise KeyError(
                f"checkpoint.best_metric={cc.best_metric!r} is not among the evaluation metrics "
                f"{sorted(metrics)}; set it to one of them"
            )
        value = metrics[cc.best_metric]
        better = self.best_value is None or (value > self.best_value if cc.best_mode == "max" else value < self.best_value)
        if better:
            self.best_value = value
        return better

    # ================================================================== logging
    def _log_train(self) -> None:
        # Every rank draws the same micro-batch sizes, so the global sample count needs no collective. A
        # stop-request meeting that is due rides on this all-reduce rather than costing one of its own.
        # Token counts differ by rank (text lengths), so they ride on it too: rank 0's times world size was
        # not the job's throughput.
        meet = self.step < self.total_steps and self.stop_request.due(self.step)
        extra = [float(self.metrics.tokens)] if self.task.count_tokens is not None else []
        if meet:
            extra += self.stop_request.vote(self.step, self.ckpt.written)
        values = self._window_loss.view(1)
        if extra:
            values = torch.cat([values, torch.tensor(extra, dtype=torch.float64, device=self.device)])
        total = all_reduce_sum(values, self.dist).tolist()
        tokens = total[1] if self.task.count_tokens is not None else None
        if meet:
            self.stop_request.settle(self.step, total[1 + (tokens is not None):])
        loss = total[0] / max(1, self._window_n * self.dist.world_size)
        record = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": self.scheduler.get_last_lr()[0]}
        if self._grad_norm is not None:
            record["grad_norm"] = self._grad_norm.item()
        record.update(self.metrics.snapshot(tokens))  # after the syncs above: the interval's time is complete
        if self.guard.skipped:
            record["nonfinite_skipped"] = self.guard.skipped
        self.logger.log(record)
        self._hook(self.task.hooks.after_log, self.step, record)
        self._window_loss.zero_()
        self._window_n = 0

    def _write_memory_report(self) -> None:
        """memory.json: each rank's peak host (and GPU) memory at the end of set-up and of training."""
        ranks = gather_objects({"rank": self.dist.rank, "setup": self.setup_memory,
                                "train": memory_peaks(self.device)}, self.dist)
        if self.dist.is_main:
            report = {"device": str(self.device), "strategy": self.cfg.strategy, "ranks": ranks}
            (self.run_dir / "memory.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    # ================================================================== checkpoints
    def state_dict(self) -> dict:
        """The loop's own state (model and optimizer are saved beside it)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "world_size": self.dist.world_size,
            "best_value": self.best_value,
            "early_stopping": self.early_stopping.state_dict(),
            "stopped_early": self.stopped_early,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "nonfinite": self.guard.state_dict(),
            "seed": self.cfg.seed,
            "config": self.settings,  # what decides the numbers: a resume with others is refused
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # Format 2 checkpoints count batches per rank only; their world size is this run's.
        self.sample_in_epoch = state.get("sample_in_epoch", min(self.batch_in_epoch * self.cfg.train.batch_size,
                                                                 self.sampler.per_rank()) * self.dist.world_size)
        self.best_value = state["best_value"]
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.stopped_early = state["stopped_early"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        self.guard.load_state_dict(state.get("nonfinite", {}))

    def save_checkpoint(self) -> Path:
        fi = self.cfg.fault_injection
        kill = fi.kill_during_save_at_step == self.step and first_attempt()
        self.beat(self.step, 0, "checkpoint")
        if self.ckpt_format == "torch":
            path = self.ckpt.save(self.step, self.model.state_dict(), self.optimizer.state_dict(), self.state_dict(),
                                  kill_midway=kill, disk_full=fi.disk_full_at_step == self.step)
        else:  # sharded: every rank writes its part; an async write is completed at the next save
            async_save = self.cfg.checkpoint.async_save
            path = self.ckpt.begin_save(self.step, self.state_dict(),
                                        lambda d: self.strategy.save_state(d, async_save), self.ckpt_format)
        self.last_saved_step = self.step
        self.logger.info(f"checkpoint {path}" + (" (written in the background)" if self.ckpt.pending else ""))
        return path

    def _load_auto(self):
        """The newest checkpoint every rank can load; a damaged one is skipped with a warning."""
        for path in self.ckpt.agreed_newest_first():
            try:
                # Collective: all ranks resume from the same step, and skip a checkpoint any rank cannot read.
                return self.ckpt.load(path)
            except CheckpointError as exc:
                print(f"[dtrain] warning (rank {self.dist.rank}): {exc}; falling back to the previous checkpoint",
                      flush=True)
        return None

    def _start(self) -> None:
        """Resume from a checkpoint if the config says so (and its settings agree), then record the config."""
        # A launcher that binds each rank to fewer CPUs than asked for slows data loading and the CPU
        # backends without any error: say how many each rank got.
        self.logger.info(describe_cpus(self.dist))
        mode = self.cfg.checkpoint.resume
        if mode == "none" and self.ckpt.agreed_newest_first():
            raise CheckpointError(
                f"{self.ckpt.root} already holds checkpoints and checkpoint.resume=none; "
                "set checkpoint.resume=auto to continue that run, or choose another output_dir"
            )
        loaded = self._load_auto() if mode == "auto" else (self.ckpt.load(Path(mode)) if mode != "none" else None)
        if loaded is None:
            self._record_config()
            self.logger.start_fresh()
            self.logger.info(
                f"starting fresh: {self.dist.world_size} rank(s) on {self.device.type}, "
                f"{self.total_steps} steps ({self.steps_per_epoch}/epoch)"
            )
            return
        path = loaded.path
        changed = check_resume(path, loaded.train_state.get("config"), self.settings,
                               self.cfg.checkpoint.allow_changes, self.dist.is_main)
        if changed:
            self.logger.info("resuming with changed settings (checkpoint.allow_changes): " + "; ".join(changed))
        self._record_config()
        try:
            if loaded.model is not None:
                self.model.load_state_dict(loaded.model)
                self.optimizer.load_state_dict(loaded.optim)
            else:
                self.strategy.load_state(path / "state")
        except RuntimeError as exc:  # another model, or another shape
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            part = path / ("model.pt" if loaded.model is not None else "state")
            raise CheckpointError(
                f"{part} does not fit this model ({detail}); "
                "resume with the recipe, strategy and task settings that wrote it, or start a new output_dir"
            ) from None
        self.load_state_dict(loaded.train_state)
        self.last_saved_step = self.step
        if loaded.world_size != self.dist.world_size:
            self._rescale_after_world_size_change(loaded.world_size)
        # Last: nothing may draw random numbers between this and the next training step.
        if loaded.rng is not None:
            restore_rng(loaded.rng)
        self.logger.resumed_at(self.step)
        self.logger.info(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _samples_per_rank(self) -> int:
        """Samples each rank draws in a whole epoch: what the steps and the schedule are counted from."""
        return self.sampler.per_rank()

    def _plan_steps(self, per_rank: int) -> None:
        """Steps per epoch and in all when each rank draws `per_rank` samples an epoch, and the schedule."""
        tc = self.cfg.train
        self.batches_per_epoch = len(micro_batch_sizes(per_rank, tc.batch_size))
        self.steps_per_epoch = -(-self.batches_per_epoch // tc.grad_accum_steps)
        self.total_steps = tc.epochs * self.steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        self.scheduler = self._make_scheduler(self.total_steps)

    def _make_scheduler(self, total: int):
        if self.task.scheduler is not None:
            return self.task.scheduler(self.optimizer, total)
        return build_scheduler(self.optimizer, self.cfg.optim, total)

    def _hook(self, hook, *args) -> None:
        self.task.hooks.run(hook, self.model, self.dist.is_main, *args)

    def _record_config(self) -> None:
        changed = record_config(self.run_dir, self.cfg) if self.dist.is_main else []
        if changed:
            self.logger.info("settings changed since the last start (results unaffected): " + "; ".join(changed))

    def _rescale_after_world_size_change(self, before: int) -> None:
        """Steps left are counted afresh: the epoch goes on from its global sample position, with this
        world size's global batch. The schedule is rebuilt for the new total at the same step."""
        per_step = self.cfg.train.batch_size * self.cfg.train.grad_accum_steps
        self.sampler.set_epoch(self.epoch, start=self.sample_in_epoch)
        left_in_epoch = -(-self.sampler.per_rank() // per_step)
        total = self.step + left_in_epoch + (self.cfg.train.epochs - self.epoch - 1) * self.steps_per_epoch
        if self.cfg.train.max_steps is not None:
            total = min(total, self.cfg.train.max_steps)
        state = self.scheduler.state_dict()
        self.total_steps = total
        self.scheduler = self._make_scheduler(total)
        self.scheduler.load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # building the scheduler reset it to step 0's
        self.logger.info(f"world size {before} -> {self.dist.world_size}: the epoch continues at global sample "
                         f"{self.sample_in_epoch}; {total - self.step} steps left; RNG streams re-seeded per rank")
