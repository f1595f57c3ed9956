"""Fault tolerance without restart: replica groups kept in step by torchft (`ft:` in the config).

`dtrain launch --replica-groups R` starts one Lighthouse and R groups (here: one process each, strategy
ddp). Every optimizer step, the live groups form a quorum; each trains on its share of the step's
samples, the gradients are averaged across the quorum, and the step commits only where every member
finished its reduction. A group that dies costs the others the step in flight (discarded, retried with
the same samples) and a stall of about `ft.heartbeat_timeout_ms`; the launcher restarts it, and it heals
from a live peer (weights, optimizer, schedule and loop position) instead of from disk.

The data contract (docs/fault-tolerance.md): the step's samples are the next ones of the epoch's global
order, at position `sample_in_epoch` (healed with the rest), strided over the quorum's members exactly as
TrainSampler strides them over ranks. So every sample of an epoch is trained exactly once whatever groups
come and go, and with a fixed membership of R groups the steps are those of an R-rank ddp run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch

from dtrain.checkpoint import CheckpointManager
from dtrain.config import RunConfig
from dtrain.data import SeededSamples, TrainSampler, batch_len, micro_batch_sizes, move_to
from dtrain.dist import DistState, mean_over_replicas_
from dtrain.fault_injection import after_step, first_attempt
from dtrain.preemption import DONE_FILE, MARKER, Preempted
from dtrain.recipe import Task
from dtrain.trainer import Trainer

GROUP_ENV = "DTRAIN_REPLICA_GROUP"
"""The replica group a process belongs to (0..R-1), set by the launcher: stable across restarts."""
LIGHTHOUSE_ENV = "TORCHFT_LIGHTHOUSE"
JOB_ENV = "DTRAIN_FT_JOB"
"""Names this start of the job (the launcher's): the groups' start barrier is its own, not an earlier one's."""


class FtUnavailable(RuntimeError):
    """ft.enabled without torchft installed, or outside `dtrain launch --replica-groups`."""

    bad_input = True


def require_torchft():
    try:
        import torchft
    except ImportError:
        raise FtUnavailable("ft.enabled needs torchft, which is not installed; pip install 'dtrain[ft]' "
                            "(or torchft==0.2.0)") from None
    return torchft


def group_run_dir(output_dir: str | Path, group: int) -> Path:
    """Where group `group` logs (metrics.jsonl, ft_steps.jsonl); checkpoints are shared, one level up."""
    return Path(output_dir) / f"replica_{group}"


class FaultTolerantTrainer(Trainer):
    """The Trainer's model, optimizer, schedule, evaluation and checkpoints, with the step loop of a replica
    group: quorum, this member's share of the step's samples, backward, average over the quorum, commit."""

    def __init__(self, cfg: RunConfig, dist: DistState, task: Task):
        require_torchft()
        # torchft logs every quorum, and a traceback for each fault it absorbs; dtrain says one line per
        # discarded step and per heal instead. DTRAIN_FT_DEBUG=1 keeps torchft's own.
        if not os.environ.get("DTRAIN_FT_DEBUG"):
            for name in ("torchft", "torchft_quorums", "torchft_commits", "torchft_errors"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        self.group = int(os.environ.get(GROUP_ENV, "-1"))
        if self.group < 0 or LIGHTHOUSE_ENV not in os.environ:
            raise FtUnavailable("ft.enabled: start the job with `dtrain launch --replica-groups R CONFIG`, which "
                                "runs the Lighthouse and the groups")
        shared = Path(cfg.output_dir)
        super().__init__(replace(cfg, output_dir=str(group_run_dir(shared, self.group))), dist, task)
        self.shared_dir = shared
        self.ckpt = CheckpointManager(shared / "checkpoints", dist, cfg.checkpoint.keep_last)
        self.data = SeededSamples(task.train_data, cfg.seed)
        self.collate = task.collate_fn or torch.utils.data.default_collate
        self.manager = None
        self._grad_norm = None
        self.discarded = 0  # steps this group computed that did not commit
        self.quorum = (1, 0)  # (members, this group's place) of the step in flight
        self.record = (self.run_dir / "ft_steps.jsonl").open("a") if cfg.ft.record_steps else None
        self._stop: signal.Signals | None = None

    def _samples_per_rank(self) -> int:
        """Counted for the nominal membership: an epoch's steps and the schedule are an R-rank run's (the
        Trainer plans them, and its progress line counts them, from this). With fewer live groups a step
        holds fewer samples, and the scheduler advances only as samples are trained (_after_ft_step), so
        the epochs still end at the schedule's end."""
        return TrainSampler(len(self.task.train_data), 0, self.cfg.ft.replica_groups, self.cfg.seed).per_rank()

    # ================================================================== the loop
    def fit(self) -> dict[str, float]:
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop at the next step boundary, as the Trainer does
            signal.signal(sig, lambda s, f: setattr(self, "_stop", signal.Signals(s)))
        (self.run_dir / "pid").write_text(f"{os.getpid()}\n")  # which process is this group (for chaos tests)
        try:
            self._start()  # the newest checkpoint on disk, before the first quorum: losing every group loses no more
            self.manager = self._make_manager()
            if first_attempt():
                self._wait_for_every_group()
            else:  # after "starting fresh" or "resumed from" above: a live group's state comes first, if any
                self.logger.info("restarted: the first quorum brings this group the state of a live one, if any")
            self.train_model.train()
            tc = self.cfg.train
            while self.epoch < tc.epochs and (tc.max_steps is None or self.step < tc.max_steps):
                committed, window = self._ft_step()
                if committed:
                    self._after_ft_step(window)
                if self._stop is not None or (self.shared_dir / MARKER).exists():
                    self._stop_now()
            self.logger.info(f"done: {self.step} steps, {self.epoch} epochs, {self.discarded} step(s) discarded "
                             f"by faults, output in {self.run_dir}")
            if self.test_loader is not None:
                self.test()
            self._hook(self.task.hooks.at_end, self.model, self.step, self.last_eval)
            return self.last_eval
        finally:
            if self.manager is not None:
                self.manager.shutdown(wait=False)
            if self.record is not None:
                self.record.close()
            self.logger.close()
            self.strategy.close()

    def _ft_step(self) -> tuple[bool, list[int]]:
        """One step in a quorum: returns whether it committed, and this group's micro-batch sizes."""
        m, tc = self.manager, self.cfg.train
        t0 = time.perf_counter()
        self.beat(self.step + 1, 0, "data")
        m.start_quorum()  # synchronous: a group that heals has the peer's state when this returns
        members, place = m.num_participants(), m.participating_rank()
        self.quorum = (members, place)
        keys = self._my_samples(members, place or 0)
        window = micro_batch_sizes(len(keys), tc.batch_size)
        window_samples = sum(window)
        fi = self.cfg.fault_injection
        step = self.step + 1
        at = 0
        parts = []
        for i, n in enumerate(window):
            batch = self.collate([self.data[k] for k in keys[at:at + n]])
            at += n
            batch = move_to(batch, self.device)
            if self.task.train_transform is not None:
                batch = self.task.train_transform(batch)
            assert batch_len(batch) == n
            self.beat(step, i, "forward")
            with self.precision.autocast():
                outputs = self.task.forward(self.train_model, batch)
                loss = self.task.loss_fn(outputs, batch)
            self.strategy.backward(loss if n == window_samples else loss * (n / window_samples))
            parts.append(loss.detach().double() * n)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:  # a parameter this group's batch did not reach still takes part in the reduction
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        self.beat(step, len(window), "optimizer")
        if fi.kill_in_reduce_at_step == step and fi.kill_rank == self.group and first_attempt():
            time.sleep(0.3)  # the peers are inside their reduction by now, waiting for this group's part
            os.kill(os.getpid(), signal.SIGKILL)
        mean_over_replicas_(grads, m)
        committed = m.should_commit()
        if committed:
            self._grad_norm = self.strategy.step(False).norm
            step_loss = torch.stack(parts).sum()
            self._window_loss += step_loss
            self._window_n += window_samples
            self.metrics.add(window_samples, 0)
        else:
            self.discarded += 1
            err = m.errored()
            why = str(err.original_exception).splitlines()[0] if err else "another member did not finish it"
            self.logger.info(f"step {step} discarded ({why}); retried with the same samples in a new quorum")
        self.strategy.zero_grad()
        if self.record is not None:
            self._record_step(step, committed, keys, members, place, time.perf_counter() - t0)
        return committed, window

    def _my_samples(self, members: int, place: int) -> list[tuple[int, int]]:
        """This member's keys (index, epoch) of the next step: positions sample_in_epoch + place + j * members
        of the epoch's order (TrainSampler's striding over `members` ranks). At an epoch's end (less than
        one sample per member left: the tail rule) the next epoch begins, in the same quorum. The Trainer's
        sampler serves every step, its rank and world set to the quorum: it keeps the epoch's order, so a
        step does not redo the permutation (and sort) of the whole data set. (Its DataLoader is not used here.)"""
        tc = self.cfg.train
        sampler = self.sampler
        sampler.rank, sampler.world_size = place, members
        for _ in range(2):
            sampler.set_epoch(self.epoch, start=self.sample_in_epoch)
            if sampler.per_rank() > 0:
                return sampler.head(tc.batch_size * tc.grad_accum_steps)
            self.epoch += 1
            self.sample_in_epoch = self.batch_in_epoch = 0
        raise ValueError(f"the training set has {len(self.data)} samples, fewer than the {members} replica groups")

    def _after_ft_step(self, window: list[int]) -> None:
        cc, tc = self.cfg.checkpoint, self.cfg.train
        members, place = self.quorum
        self.step += 1
        self.batch_in_epoch += len(window)
        self.sample_in_epoch += sum(window) * members
        left = (len(self.data) - self.sample_in_epoch) // members
        epoch_end = left == 0
        if epoch_end:
            self.epoch += 1
            self.batch_in_epoch = self.sample_in_epoch = 0
        # The schedule follows the samples trained, counted in the nominal global batch (R groups): one
        # scheduler step per optimizer step with every group alive, fewer while some are down, so a job
        # that lost a group still ends its epochs at the schedule's end, not far past it at the final lr.
        per_step = tc.batch_size * tc.grad_accum_steps * self.cfg.ft.replica_groups
        while self.scheduler.last_epoch < self.epoch * self.steps_per_epoch + self.sample_in_epoch // per_step:
            self.scheduler.step()
        last = self.epoch >= tc.epochs or (tc.max_steps is not None and self.step >= tc.max_steps)
        self.logger.tick(self.step)
        if self.step % tc.log_every == 0 or last:
            self._log_train()
        improved = False
        # Every group evaluates (they hold the same weights): the groups stay in step, and whichever leads
        # the next quorum knows the best value.
        if self.val_loader is not None and ((tc.eval_every and self.step % tc.eval_every == 0)
                                            or (tc.eval_every is None and epoch_end) or last):
            metrics = self.evaluate()
            self.last_eval = metrics
            self.logger.log({"step": self.step, "epoch": self.epoch, **metrics}, kind="eval")
            improved = self._is_improvement(metrics)
        due_save = (cc.every_steps and self.step % cc.every_steps == 0) or (cc.every_epoch and epoch_end) or last
        if (due_save or improved) and place == 0:  # one writer: the quorum's first member
            path = self.save_checkpoint()
            if improved:
                self.ckpt.mark_best(path, cc.best_metric, self.best_value, self.step)
        after_step(self.cfg.fault_injection, self.step, self.group)

    def _stop_now(self) -> None:
        """A stop on request (SIGTERM, Ctrl-C): the quorum's first member saves; every group then stops."""
        if self.quorum[1] == 0:
            if self.last_saved_step != self.step:
                self.save_checkpoint()
            (self.shared_dir / DONE_FILE).write_text(f"{self.step}\n")  # a Slurm batch script requeues on it
        why = self._stop.name if self._stop else "a stop request"
        raise Preempted(f"stopped at step {self.step} on {why}; run the same command to continue",
                        interrupted=self._stop == signal.SIGINT)

    # ================================================================== state shared with a healing peer
    def _make_manager(self):
        from torch.distributed import TCPStore
        from torchft import Manager, ProcessGroupGloo

        ft = self.cfg.ft
        # The group's own store (one process per group): torchft keeps the group's manager address in it.
        store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        manager = Manager(
            pg=ProcessGroupGloo(timeout=timedelta(seconds=ft.timeout_s)),
            load_state_dict=self._load_healed, state_dict=self._healing_state,
            min_replica_size=ft.min_replicas, use_async_quorum=False,
            timeout=timedelta(seconds=ft.timeout_s), quorum_timeout=timedelta(seconds=ft.quorum_timeout_s),
            connect_timeout=timedelta(seconds=ft.timeout_s),
            rank=0, world_size=1, store_addr="127.0.0.1", store_port=store.port,
            replica_id=f"dtrain_group_{self.group}", checkpoint_transport=_weights_only_transport(ft.timeout_s),
            quorum_retries=ft.quorum_retries,
        )
        self._store = store
        # The position on disk (a resume) is the Manager's too: its step and committed count.
        manager.load_state_dict({"step": self.step, "batches_committed": self.ft_committed})
        return manager

    ft_committed = 0

    def _wait_for_every_group(self) -> None:
        """At the job's start, every group's Manager is up before the first quorum (or ft.join_timeout_s has
        passed): the Lighthouse forms a quorum of the groups it hears from, and a group still importing
        torch would otherwise join a step or two late, by healing."""
        ready = self.shared_dir / ".ft_ready" / os.environ.get(JOB_ENV, "job").replace("/", "_").replace(":", "_")
        ready.mkdir(parents=True, exist_ok=True)
        (ready / str(self.group)).write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + self.cfg.ft.join_timeout_s
        while len(list(ready.iterdir())) < self.cfg.ft.replica_groups and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a few heartbeats (100 ms apart): the Lighthouse counts the last group as alive

    def _healing_state(self) -> dict:
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(), "loop": self.state_dict()}

    def _load_healed(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.load_state_dict(state["loop"])
        self.logger.info(f"healed from a live peer at step {self.step} (epoch {self.epoch}, sample {self.sample_in_epoch})")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["ft"] = self.manager.state_dict() if self.manager is not None else {"step": self.step, "batches_committed": 0}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ft_committed = state.get("ft", {}).get("batches_committed", 0)

    def _record_step(self, step, committed, keys, members, place, seconds) -> None:
        digest = hashlib.sha256()
        for t in self.model.state_dict().values():
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self.record.write(json.dumps({
            "step": step, "committed": committed, "members": members, "place": place, "epoch": keys[0][1] if keys else self.epoch,
            "samples": [k[0] for k in keys], "digest": digest.hexdigest()[:16], "seconds": round(seconds, 4),
            "time": time.time()}) + "\n")
        self.record.flush()


def _weights_only_transport(timeout_s: float):
    """torchft's HTTP transport, loading a peer's state with weights_only=True (its own loads it with
    weights_only=False: arbitrary code from whoever answers on that port)."""
    from torch.distributed._serialization import _streaming_load
    from torchft.checkpointing import HTTPTransport

    class WeightsOnly(HTTPTransport):
        @classmethod
        def _load_from_address(cls, address: str, timeout: timedelta):
            import urllib.request

            with urllib.request.urlopen(address, timeout=timeout.total_seconds()) as f, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given buffer is not writable")  # read once, then copied
                return _streaming_load(f, weights_only=True)

    return WeightsOnly(timeout=timedelta(seconds=timeout_s), num_chunks=0)


def read_records(output_dir: str | Path, group: int) -> list[dict]:
    """A group's ft_steps.jsonl (ft.record_steps): one record per step it computed, in order, over its restarts."""
    path = group_run_dir(output_dir, group) / "ft_steps.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit(output_dir: str | Path, groups: int, num_samples: int, epochs: int) -> list[str]:
    """The contract checked on a finished run's records (ft.record_steps), as problems in words (none: kept):
    every sample of every epoch trained exactly once across the groups (the tail rule leaving out fewer
    than the quorum had members), and every group that committed a step holding the same weights after it
    (digests equal: a healed group included)."""
    from collections import Counter, defaultdict

    problems = []
    seen: dict[int, Counter] = defaultdict(Counter)
    digests: dict[int, set] = defaultdict(set)
    for g in range(groups):
        final = {r["step"]: r for r in read_records(output_dir, g) if r["committed"]}  # the last of a redone step
        for r in final.values():
            seen[r["epoch"]].update(r["samples"])
            digests[r["step"]].add(r["digest"])
    for e in range(epochs):
        twice = sorted(i for i, c in seen[e].items() if c > 1)
        if twice:
            problems.append(f"epoch {e}: {len(twice)} sample(s) trained more than once, e.g. {twice[:5]}")
        if not num_samples - groups < len(seen[e]) <= num_samples:
            problems.append(f"epoch {e}: {len(seen[e])} of {num_samples} samples trained")
    split = sorted(s for s, d in digests.items() if len(d) > 1)
    if split:
        problems.append(f"groups hold different weights after step(s) {split[:5]}")
    return problems
