"""One training loop for every variant: irnet, dsn, dsn_dropout, lc and mc (`lc train`).

In the manner of torchvision's segmentation reference: SGD with momentum and weight decay (or AdamW),
a poly learning rate per iteration (heads at lr x train.head_lr_mult), iteration based, mixed
precision on CUDA (train.amp), DistributedDataParallel under torchrun. Read top to bottom:
`train` = `setup_run` (lc.training.setup: model, data, resume) -> one `_train_network` per
network -> `_finish`; `_train_network` repeats `_step` and, when due, `_log_row` and `_checkpoint`.

What each variant routes, which losses it has, where it starts and its budget come from
lc.models.variants; where it starts from is explained in lc.training.initialise. The Model Cascade
is three single-network trainings in turn (train.iterations.mc each, member k only on the pixels
members < k pass on, ModelCascade.passed_mask); the others are one.

<out>/resume.pt is written atomically every train.checkpoint_every iterations, <out>/checkpoint.pt
at the end. By default a run continues from resume.pt (else a finished checkpoint.pt), logging
"resuming from FILE at iteration N", and ends with the weights an uninterrupted run would have.
A state whose settings differ is refused; one whose inputs changed (init checkpoint, train list or data,
ImageNet weights) is discarded and the run restarts, with the reason logged. `resume=False` removes
resume.pt, checkpoint.pt and train_done.json first. The run folder is locked while training
(lc.training.run_folder): a second run into it stops naming the holder's PID.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from lc.data.io import write_text_atomic
from lc.models.variants import VARIANTS
from lc.training.checkpoint import capture_rng_state, kill_point, save_checkpoint
from lc.training.distributed import setup_distributed, teardown_distributed
from lc.training.losses import cascade_loss
from lc.training.preempt import Preempted, StopRequest
from lc.training.run_folder import RunFolderLock
from lc.training.setup import MC_MEMBERS, Run, setup_run, total_iterations
from lc.training.train_log import LOG_COLUMNS, MetricWindow

__all__ = ["LOG_COLUMNS", "TRAIN_VARIANTS", "TrainResult", "poly_lr_factor", "total_iterations", "train"]

TRAIN_VARIANTS = tuple(VARIANTS)


@dataclass
class TrainResult:
    """What `train` returns; `model` is the trained (unwrapped) model on its device, in eval mode."""

    model: nn.Module
    iterations: int
    final_loss: float | None
    device: str
    world_size: int
    rank: int
    wall_time_s: float
    checkpoint: Path  # checkpoint.pt when the run is complete, else resume.pt (stop_after)


@dataclass
class Phase:
    """One network's training: iterations [first, first + length) of the run (mc: one member)."""

    member: int | None
    first: int
    length: int

    @property
    def stop(self) -> int:
        return self.first + self.length


def poly_lr_factor(iteration: int, total: int, power: float) -> float:
    """(1 - iteration / total) ** power: the factor on the base learning rate at `iteration`."""
    return (1.0 - iteration / total) ** power


def train(cfg: dict, dataset: str, variant: str, out_dir: str | Path, init: str | Path | None = None,
          resume: bool = True, device: str | torch.device | None = None, rho: float | None = None,
          stop_after: int | None = None, split: str = "train",
          stop: StopRequest | None = None) -> TrainResult:
    """Train `variant` on `dataset`, writing <out_dir>/{checkpoint.pt, train_log.csv, train_done.json}.

    init: the checkpoint the cascade variants start from (lc.training.initialise); resume: continue
    from <out_dir>/resume.pt (else a finished checkpoint.pt) when present, False: remove them first;
    device: overrides cfg["device"]; rho: overrides train.rho (the routing threshold while training);
    stop_after: checkpoint and return once this many iterations are done (time-limited jobs, tests);
    split: the prepared split trained on ("train" = VOC's train_aug; "trainval_aug" for the VOC
    test-server model, evaluate.export_train_split); stop: an installed lc.training.preempt.StopRequest:
    on its signal the run writes resume.pt after the current iteration and raises Preempted.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")
    wall_start = time.perf_counter()
    ctx = setup_distributed(device if device is not None else cfg.get("device", "auto"))
    lock = RunFolderLock(out_dir, enabled=ctx.is_main)  # one `lc train` per run folder at a time
    try:
        lock.acquire()
        run = setup_run(cfg, dataset, VARIANTS[variant], Path(out_dir), None if init is None else Path(init),
                        resume, ctx, rho, stop_after, split)
        for phase in _phases(run):
            _train_network(run, phase, stop)
        result = _finish(run, wall_start)
    except BaseException:
        teardown_distributed(ctx, wait=False)  # the other processes may never reach a barrier
        raise
    finally:
        lock.release()
    teardown_distributed(ctx)
    return result


# --- the networks of a run -------------------------------------------------------------------
def _phases(run: Run) -> list[Phase]:
    """One phase per network trained: the whole run, or each Model Cascade member in turn."""
    if run.variant.model_kind != "mc":
        return [Phase(None, 0, run.total)]
    per_member = run.total // MC_MEMBERS
    return [Phase(k, k * per_member, per_member) for k in range(MC_MEMBERS)]


def _train_network(run: Run, phase: Phase, stop_request: StopRequest | None = None) -> None:
    """Train one network from the run's current iteration to the end of its phase (or the stop)."""
    stop = min(phase.stop, run.end)
    if run.iteration >= stop or run.iteration < phase.first:
        return
    optimizer, trained = _trainable(run, phase)
    resumed = run.resumed
    if resumed is not None and run.iteration == run.start and resumed.get("optimizer") is not None \
            and resumed.get("mc_member") == phase.member:
        optimizer.load_state_dict(resumed["optimizer"])
    window = MetricWindow(run.ctx.device)
    while run.iteration < stop:
        _step(run, phase, optimizer, trained, window)
        run.iteration += 1
        run.progress.step()
        kill_point(run.iteration)  # fault injection for the tests; a no-op otherwise
        phase_done = run.iteration == phase.stop
        if run.iteration % int(run.cfg["train"]["log_every"]) == 0 or run.iteration == run.end or phase_done:
            _log_row(run, optimizer, window)
        if run.iteration % int(run.cfg["train"]["checkpoint_every"]) == 0 or run.iteration == run.end \
                or phase_done:
            _checkpoint(run, phase, optimizer)
        if stop_request is not None and run.iteration < stop \
                and stop_request.should_stop(run.ctx.device, run.ctx.distributed):
            _checkpoint(run, phase, optimizer)  # resume.pt: the next job continues from here
            raise Preempted(stop_request.signame or "a signal", run.iteration, str(run.paths[1]))


def _trainable(run: Run, phase: Phase) -> tuple[torch.optim.Optimizer, nn.Module]:
    """The optimizer and the (DDP-wrapped when distributed) module trained in `phase`."""
    module = run.model
    run.model.train()
    if phase.member is not None:
        run.model.eval()  # the earlier members only route (passed_mask)
        module = run.model.members[phase.member].train()
    optimizer = _optimizer(module, run.cfg["train"])
    if run.ctx.distributed:
        device_ids = [run.ctx.device.index] if run.ctx.device.type == "cuda" else None
        # routed stages may leave later parameters unused in a forward
        module = DistributedDataParallel(module, device_ids=device_ids,
                                         find_unused_parameters=run.variant.routed and phase.member is None)
    return optimizer, module


def _optimizer(module: nn.Module, train_cfg: dict) -> torch.optim.Optimizer:
    """SGD (the paper) or AdamW (train.optimizer); heads (modules named head*) at lr x head_lr_mult.

    Frozen BN parameters are left out.
    """
    backbone, heads = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (heads if name.split(".")[0].startswith("head") else backbone).append(param)
    lr = float(train_cfg["lr"])
    groups = [{"params": backbone, "initial_lr": lr},
              {"params": heads, "initial_lr": lr * float(train_cfg["head_lr_mult"])}]
    groups = [g for g in groups if g["params"]]
    if train_cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=float(train_cfg["weight_decay"]))
    return torch.optim.SGD(groups, lr=lr, momentum=float(train_cfg["momentum"]),
                           weight_decay=float(train_cfg["weight_decay"]))


# --- one iteration ---------------------------------------------------------------------------
def _step(run: Run, phase: Phase, optimizer: torch.optim.Optimizer, trained: nn.Module,
          window: MetricWindow) -> None:
    tcfg = run.cfg["train"]
    factor = poly_lr_factor(run.iteration - phase.first, phase.length, float(tcfg["poly_power"]))
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    batch = next(run.batches)
    images = batch["image"].to(run.ctx.device, non_blocking=True)
    labels = batch["label"].to(run.ctx.device, non_blocking=True)
    with torch.autocast(device_type=run.ctx.device.type, dtype=torch.float16, enabled=run.use_amp):
        losses = _forward_loss(run, phase, trained, images, labels)
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(losses.total).backward()
    run.scaler.step(optimizer)
    run.scaler.update()
    window.add(losses.total, losses.stage_loss, losses.stage_fraction)


def _forward_loss(run: Run, phase: Phase, trained: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    tcfg = run.cfg["train"]
    normalization = tcfg.get("loss_normalization", "region")
    if phase.member is None:
        out = trained(images)
        loss_stages = [0, 1, 2] if run.variant.stage_losses else [2]
        return cascade_loss(out.stage_logits, out.stage_masks, labels, tcfg["stage_loss_weights"],
                            loss_stages, normalization)
    # a Model Cascade member: one loss, on the pixels the earlier members pass on
    passed = run.model.passed_mask(images, phase.member)
    out = trained(images, execution="dense")
    masks: list = [None, None, None]
    masks[phase.member] = passed
    return cascade_loss(out.stage_logits, masks, labels, [1.0, 1.0, 1.0], [phase.member], normalization)


# --- log and checkpoint ----------------------------------------------------------------------
def _log_row(run: Run, optimizer: torch.optim.Optimizer, window: MetricWindow) -> None:
    means = window.means(run.ctx)
    run.final_loss = means[0]
    if run.final_loss is not None and not np.isfinite(run.final_loss):
        raise FloatingPointError(f"training loss is {run.final_loss} at iteration {run.iteration} of "
                                 f"{run.dataset}/{run.variant.name}; lower train.lr")
    lr = optimizer.param_groups[0]["lr"]
    if run.log is not None:
        run.log.append(dict(zip(LOG_COLUMNS, [run.iteration, lr, *means, run.seconds()], strict=True)))
    run.progress.row(run.iteration, lr, means)


def _checkpoint(run: Run, phase: Phase, optimizer: torch.optim.Optimizer) -> None:
    """Gather every process's RNG state; the main process writes resume.pt (checkpoint.pt at the end)."""
    rng = [capture_rng_state()]
    if run.ctx.distributed:
        rng = [None] * run.ctx.world_size
        dist.all_gather_object(rng, capture_rng_state())
    if not run.ctx.is_main:
        return
    ckpt_path, resume_path, _ = run.paths
    state = {"model": run.model.state_dict(), "model_spec": run.spec, "config": run.cfg, "rng": rng,
             "iteration": run.iteration, "elapsed_s": run.seconds(), "optimizer": optimizer.state_dict(),
             "mc_member": phase.member, "scaler": run.scaler.state_dict() if run.use_amp else None,
             "inputs": run.inputs, "init_iterations_total": run.init_total,
             "iterations_total": run.init_total + run.iteration, "bn_recalibration": run.bn_recalibration}
    save_checkpoint(ckpt_path if run.iteration >= run.total else resume_path, state)


def _finish(run: Run, wall_start: float) -> TrainResult:
    run.progress.close()
    ckpt_path, resume_path, done_path = run.paths
    finished = run.iteration >= run.total
    if run.ctx.is_main and finished:
        resume_path.unlink(missing_ok=True)
    if run.ctx.is_main and finished and (run.start < run.total or not done_path.exists()):
        summary = {"dataset": run.dataset, "split": run.split, "variant": run.variant.name,
                   "preset": run.cfg.get("preset"),
                   "iterations": run.iteration, "iterations_total": run.init_total + run.iteration,
                   "final_loss": run.final_loss, "device": str(run.ctx.device),
                   "world_size": run.ctx.world_size, "wall_time_s": round(run.seconds(), 3),
                   "bn_recalibration": run.bn_recalibration,
                   "checkpoint": str(ckpt_path)}
        write_text_atomic(done_path, json.dumps(summary, indent=2) + "\n")
    return TrainResult(model=run.model.eval(), iterations=run.iteration, final_loss=run.final_loss,
                       device=str(run.ctx.device), world_size=run.ctx.world_size, rank=run.ctx.rank,
                       wall_time_s=time.perf_counter() - wall_start,
                       checkpoint=ckpt_path if finished else resume_path)  # the file this run continues from
