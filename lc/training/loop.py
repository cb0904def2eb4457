"""One training loop for every variant: irnet, dsn, dsn_dropout, lc and mc (`lc train`).

In the manner of torchvision's segmentation reference: SGD with momentum and weight decay (or AdamW),
a poly learning rate per iteration (heads at lr x train.head_lr_mult), iteration based, mixed
precision on CUDA (train.amp), DistributedDataParallel under torchrun. Read top to bottom:
`train` = `_setup` (model, data, resume) -> one `_train_network` per network -> `_finish`;
`_train_network` repeats `_step` and, when due, `_log_row` and `_checkpoint`.

What each variant routes, which losses it has, where it starts and its budget come from
lc.models.variants; where it starts from is explained in lc.training.initialise. The Model Cascade
is three single-network trainings in turn (train.iterations.mc each, member k only on the pixels
members < k pass on, ModelCascade.passed_mask); the others are one.

<out>/resume.pt is written atomically every train.checkpoint_every iterations, <out>/checkpoint.pt
at the end. By default a run continues from resume.pt (else a finished checkpoint.pt), logging
"resuming from FILE at iteration N", and ends with the weights an uninterrupted run would have.
A state whose settings differ is refused; one whose inputs changed (init checkpoint, train list,
ImageNet weights) is discarded and the run restarts, with the reason logged. `resume=False` removes
resume.pt, checkpoint.pt and train_done.json first.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lc.data import NUM_CLASSES, build_dataset, seeded_generator, worker_init_fn
from lc.data.io import write_text_atomic
from lc.models.variants import VARIANTS, Variant
from lc.training.checkpoint import (
    CheckpointError,
    build_model_from_spec,
    capture_rng_state,
    load_checkpoint,
    make_model_spec,
    restore_rng_state,
    save_checkpoint,
)
from lc.training.distributed import (
    DistContext,
    EpochSampler,
    SeededSamples,
    infinite_batches,
    setup_distributed,
    teardown_distributed,
)
from lc.training.initialise import initialise, input_digests, stale_inputs
from lc.training.losses import cascade_loss
from lc.training.train_log import LOG_COLUMNS, MetricWindow, Progress, TrainLog

__all__ = ["LOG_COLUMNS", "TRAIN_VARIANTS", "TrainResult", "poly_lr_factor", "total_iterations", "train"]

log = logging.getLogger(__name__)

TRAIN_VARIANTS = tuple(VARIANTS)
# train.* settings that change the trained weights: a resumed run must have been started with them
RESULT_SETTINGS = ("optimizer", "crop_size", "batch_size", "iterations", "lr", "head_lr_mult", "momentum",
                   "weight_decay", "poly_power", "scale_range", "pretrain_bn", "amp", "stage_loss_weights")
MC_MEMBERS = 3  # the Model Cascade's networks, one per stage depth


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
    checkpoint: Path


@dataclass
class Phase:
    """One network's training: iterations [first, first + length) of the run (mc: one member)."""

    member: int | None
    first: int
    length: int

    @property
    def stop(self) -> int:
        return self.first + self.length


@dataclass
class Run:
    """Everything one `train` call works with; `iteration` counts completed iterations."""

    cfg: dict
    dataset: str
    variant: Variant
    out: Path
    ctx: DistContext
    spec: dict
    model: nn.Module
    total: int
    end: int
    start: int
    resumed: dict | None
    inputs: dict
    init_total: int
    batches: object
    scaler: torch.amp.GradScaler
    use_amp: bool
    log: TrainLog | None
    progress: Progress
    iteration: int = 0
    final_loss: float | None = None
    elapsed_before: float = 0.0
    clock: float = field(default_factory=time.perf_counter)

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """checkpoint.pt, resume.pt, train_done.json. The rolling state lives in resume.pt, not in the
        declared output checkpoint.pt: Snakemake deletes a failed job's outputs."""
        return self.out / "checkpoint.pt", self.out / "resume.pt", self.out / "train_done.json"

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock


def total_iterations(cfg: dict, variant: str) -> int:
    """All iterations of a run (mc: the three members together), from train.iterations.<budget_key>."""
    info = VARIANTS[variant]
    per_network = int(cfg["train"]["iterations"][info.budget_key])
    return per_network * (MC_MEMBERS if info.model_kind == "mc" else 1)


def poly_lr_factor(iteration: int, total: int, power: float) -> float:
    """(1 - iteration / total) ** power: the factor on the base learning rate at `iteration`."""
    return (1.0 - iteration / total) ** power


def train(cfg: dict, dataset: str, variant: str, out_dir: str | Path, init: str | Path | None = None,
          resume: bool = True, device: str | torch.device | None = None, rho: float | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train `variant` on `dataset`, writing <out_dir>/{checkpoint.pt, train_log.csv, train_done.json}.

    init: the checkpoint the cascade variants start from (lc.training.initialise); resume: continue
    from <out_dir>/resume.pt (else a finished checkpoint.pt) when present, False: remove them first;
    device: overrides cfg["device"]; rho: overrides train.rho (the routing threshold while training);
    stop_after: checkpoint and return once this many iterations are done (time-limited jobs, tests).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")
    wall_start = time.perf_counter()
    ctx = setup_distributed(device if device is not None else cfg.get("device", "auto"))
    try:
        run = _setup(cfg, dataset, VARIANTS[variant], Path(out_dir), None if init is None else Path(init),
                     resume, ctx, rho, stop_after)
        for phase in _phases(run):
            _train_network(run, phase)
        result = _finish(run, wall_start)
    except BaseException:
        teardown_distributed(ctx, wait=False)  # the other processes may never reach a barrier
        raise
    teardown_distributed(ctx)
    return result


# --- setup -----------------------------------------------------------------------------------
def _setup(cfg: dict, dataset: str, variant: Variant, out: Path, init: Path | None, resume: bool,
           ctx: DistContext, rho: float | None, stop_after: int | None) -> Run:
    tcfg = cfg["train"]
    if tcfg["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size {tcfg['batch_size']} (the global minibatch) must be divisible by "
                         f"the {ctx.world_size} processes")
    spec = _model_spec(cfg, dataset, variant, float(tcfg["rho"] if rho is None else rho))
    state_files = [out / "resume.pt", out / "checkpoint.pt", out / "train_done.json"]
    if not resume:
        _remove(state_files, ctx, "--no-resume")
    inputs = input_digests(cfg, dataset, variant, init)
    payload, source = _resumable_state(out, spec, cfg, inputs, ctx) if resume else (None, None)
    model, init_total = _prepare_model(cfg, variant, spec, init, payload, ctx)
    if payload is not None:
        init_total = int(payload.get("init_iterations_total", 0))
        if ctx.is_main:
            log.info("resuming from %s at iteration %d", source, int(payload["iteration"]))
    start = int(payload["iteration"]) if payload else 0
    total = total_iterations(cfg, variant.name)
    end = total if stop_after is None else min(total, max(stop_after, start))
    batches = _batch_stream(cfg, dataset, ctx, start)
    train_log = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if start < end:
            (out / "train_done.json").unlink(missing_ok=True)  # stale until this run completes
        train_log = TrainLog(out / "train_log.csv", start)
    use_amp = bool(tcfg["amp"]) and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if payload is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])  # one scaler for the whole run, mc members included
    progress = Progress(f"{dataset}/{variant.name}", total, start, enabled=ctx.is_main)
    run = Run(cfg=cfg, dataset=dataset, variant=variant, out=out, ctx=ctx, spec=spec, model=model,
              total=total, end=end, start=start, resumed=payload, inputs=inputs, init_total=init_total,
              batches=batches, scaler=scaler, use_amp=use_amp, log=train_log, progress=progress,
              iteration=start, final_loss=None if train_log is None else train_log.last_loss,
              elapsed_before=float(payload.get("elapsed_s", 0.0)) if payload else 0.0)
    return run


def _model_spec(cfg: dict, dataset: str, variant: Variant, rho: float) -> dict:
    model_cfg = dict(cfg["model"])
    if variant.init_from == "imagenet":  # the pretraining's BN mode is its own setting
        model_cfg["freeze_bn"] = cfg["train"]["pretrain_bn"] == "frozen"
    return make_model_spec(variant.model_kind, variant.name, NUM_CLASSES[dataset], model_cfg, rho, depth=3,
                           dataset=dataset)


def _remove(paths: list[Path], ctx: DistContext, why: str) -> None:
    """The main process deletes `paths` (the others wait, so nobody reads them afterwards)."""
    if ctx.is_main:
        for path in paths:
            if path.exists():
                log.info("%s: removing %s", why, path)
                path.unlink()
    if ctx.distributed:
        dist.barrier()


def _resumable_state(out: Path, spec: dict, cfg: dict, inputs: dict,
                     ctx: DistContext) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from (resume.pt, else checkpoint.pt), or None to start afresh."""
    resume_path, ckpt_path = out / "resume.pt", out / "checkpoint.pt"
    path = resume_path if resume_path.exists() else ckpt_path
    if not path.exists():
        return None, None
    payload = load_checkpoint(path)
    _check_settings(payload, path, spec, cfg)
    reasons = stale_inputs(payload.get("inputs"), inputs)
    if reasons:
        if ctx.is_main:
            log.warning("not resuming from %s: %s; training restarts from scratch", path, "; ".join(reasons))
        _remove([resume_path, ckpt_path, out / "train_done.json"], ctx, "stale state")
        return None, None
    return payload, path


def _check_settings(payload: dict, path: Path, spec: dict, cfg: dict) -> None:
    stored = payload.get("config") or {}
    problems = [f"model_spec.{k}: {payload['model_spec'].get(k)!r} -> {spec[k]!r}"
                for k in spec if payload["model_spec"].get(k) != spec[k]]
    problems += [f"train.{k}: {stored.get('train', {}).get(k)!r} -> {cfg['train'][k]!r}"
                 for k in RESULT_SETTINGS if stored.get("train", {}).get(k) != cfg["train"][k]]
    if stored.get("seed") != cfg["seed"]:
        problems.append(f"seed: {stored.get('seed')!r} -> {cfg['seed']!r}")
    if problems:
        raise CheckpointError(f"{path} belongs to a run with other settings ({'; '.join(problems)}); delete "
                              "it or pass --no-resume to start this run afresh")


def _prepare_model(cfg: dict, variant: Variant, spec: dict, init: Path | None, payload: dict | None,
                   ctx: DistContext) -> tuple[nn.Module, int]:
    """The model on its device, initialised or restored from `payload` (with the RNG states), and the
    iterations behind its starting point."""
    seed = int(cfg["seed"])
    torch.manual_seed(seed)  # the same initial weights in every process
    np.random.seed(seed)
    model = build_model_from_spec(spec)
    if ctx.distributed and ctx.device.type == "cuda" and not spec["model_cfg"].get("freeze_bn", True):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    init_total = 0
    if payload is None:
        init_total = initialise(model, cfg, variant, init)
    else:
        model.load_state_dict(payload["model"])
    model.to(ctx.device)
    torch.manual_seed(seed + ctx.rank)  # per-process stream for the model's own randomness (dsn_dropout)
    if payload is not None:
        states = payload.get("rng") or []
        if len(states) == ctx.world_size:
            restore_rng_state(states[ctx.rank])
        elif ctx.is_main:
            log.warning("the checkpoint was written by %d processes, this run has %d; random streams restart "
                        "(the data order does not)", len(states), ctx.world_size)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size
    return model, init_total


def _batch_stream(cfg: dict, dataset: str, ctx: DistContext, start: int):
    """This process's training batches from iteration `start` on (see lc.training.distributed)."""
    tcfg, seed = cfg["train"], int(cfg["seed"])
    train_set = build_dataset(cfg, dataset, "train", train=True)
    sampler = EpochSampler(len(train_set), tcfg["batch_size"] // ctx.world_size, seed, ctx.world_size,
                           ctx.rank)
    workers = int(tcfg["workers"])
    loader = DataLoader(SeededSamples(train_set, seed), batch_size=sampler.batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda", drop_last=True,
                        worker_init_fn=worker_init_fn, persistent_workers=workers > 0,
                        # its own generator: creating an iterator must not draw from the global stream
                        generator=seeded_generator(seed))
    return infinite_batches(loader, sampler, start)


# --- the networks of a run -------------------------------------------------------------------
def _phases(run: Run) -> list[Phase]:
    """One phase per network trained: the whole run, or each Model Cascade member in turn."""
    if run.variant.model_kind != "mc":
        return [Phase(None, 0, run.total)]
    per_member = run.total // MC_MEMBERS
    return [Phase(k, k * per_member, per_member) for k in range(MC_MEMBERS)]


def _train_network(run: Run, phase: Phase) -> None:
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
        phase_done = run.iteration == phase.stop
        if run.iteration % int(run.cfg["train"]["log_every"]) == 0 or run.iteration == run.end or phase_done:
            _log_row(run, optimizer, window)
        if run.iteration % int(run.cfg["train"]["checkpoint_every"]) == 0 or run.iteration == run.end \
                or phase_done:
            _checkpoint(run, phase, optimizer)


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
             "iterations_total": run.init_total + run.iteration}
    save_checkpoint(ckpt_path if run.iteration >= run.total else resume_path, state)


def _finish(run: Run, wall_start: float) -> TrainResult:
    run.progress.close()
    ckpt_path, resume_path, done_path = run.paths
    finished = run.iteration >= run.total
    if run.ctx.is_main and finished:
        resume_path.unlink(missing_ok=True)
    if run.ctx.is_main and finished and (run.start < run.total or not done_path.exists()):
        summary = {"dataset": run.dataset, "variant": run.variant.name, "preset": run.cfg.get("preset"),
                   "iterations": run.iteration, "iterations_total": run.init_total + run.iteration,
                   "final_loss": run.final_loss, "device": str(run.ctx.device),
                   "world_size": run.ctx.world_size, "wall_time_s": round(run.seconds(), 3),
                   "checkpoint": str(ckpt_path)}
        write_text_atomic(done_path, json.dumps(summary, indent=2) + "\n")
    return TrainResult(model=run.model.eval(), iterations=run.iteration, final_loss=run.final_loss,
                       device=str(run.ctx.device), world_size=run.ctx.world_size, rank=run.ctx.rank,
                       wall_time_s=time.perf_counter() - wall_start, checkpoint=ckpt_path)
