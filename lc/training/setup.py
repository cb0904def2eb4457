"""Setting up one training run (lc.training.loop): the model spec, the state to resume from (or
none), the model initialised or restored, the batch stream, the log, in one `Run`.

The rules of resuming are in lc.training.loop's docstring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from lc.data import NUM_CLASSES, build_dataset, seeded_generator, worker_init_fn
from lc.data.paths import canonical_split
from lc.models.variants import VARIANTS, Variant
from lc.training.bn_recalibration import recalibrate_start, recalibration_images
from lc.training.checkpoint import (
    CheckpointError,
    build_model_from_spec,
    load_checkpoint,
    make_model_spec,
    restore_rng_state,
)
from lc.training.distributed import DistContext, EpochSampler, SeededSamples, infinite_batches
from lc.training.initialise import bn_record, initialise, input_digests, stale_inputs
from lc.training.run_folder import state_paths
from lc.training.train_log import Progress, TrainLog

__all__ = ["MC_MEMBERS", "RESULT_SETTINGS", "Run", "setup_run", "total_iterations"]

log = logging.getLogger(__name__)

# train.* settings that change the trained weights: a resumed run must have been started with them
RESULT_SETTINGS = ("optimizer", "crop_size", "batch_size", "iterations", "lr", "head_lr_mult", "momentum",
                   "weight_decay", "poly_power", "scale_range", "pretrain_bn", "amp", "stage_loss_weights")
MC_MEMBERS = 3  # the Model Cascade's networks, one per stage depth


@dataclass
class Run:
    """Everything one `train` call works with; `iteration` counts completed iterations."""

    cfg: dict
    dataset: str
    split: str
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
    bn_recalibration: dict | None
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
        return state_paths(self.out)

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock


def total_iterations(cfg: dict, variant: str) -> int:
    """All iterations of a run (mc: the three members together), from train.iterations.<budget_key>."""
    info = VARIANTS[variant]
    per_network = int(cfg["train"]["iterations"][info.budget_key])
    return per_network * (MC_MEMBERS if info.model_kind == "mc" else 1)


def setup_run(cfg: dict, dataset: str, variant: Variant, out: Path, init: Path | None, resume: bool,
           ctx: DistContext, rho: float | None, stop_after: int | None, split: str = "train") -> Run:
    tcfg = cfg["train"]
    split = canonical_split(dataset, split)
    if tcfg["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size {tcfg['batch_size']} (the global minibatch) must be divisible by "
                         f"the {ctx.world_size} processes")
    spec = _model_spec(cfg, dataset, variant, float(tcfg["rho"] if rho is None else rho))
    state_files = list(state_paths(out))
    if not resume:
        _remove(state_files, ctx, "--no-resume")
    inputs = input_digests(cfg, dataset, variant, init, split)
    payload, source = _resumable_state(out, spec, cfg, inputs, ctx) if resume else (None, None)
    model, init_total, bn_recal = _prepare_model(cfg, variant, spec, init, payload, ctx, dataset, split)
    if payload is not None and ctx.is_main:
        log.info("resuming from %s at iteration %d", source, int(payload["iteration"]))
    start = int(payload["iteration"]) if payload else 0
    total = total_iterations(cfg, variant.name)
    end = total if stop_after is None else min(total, max(stop_after, start))
    batches = _batch_stream(cfg, dataset, split, ctx, start)
    train_log = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if start < end:
            state_paths(out)[2].unlink(missing_ok=True)  # train_done.json: stale until this run completes
        train_log = TrainLog(out / "train_log.csv", start)
    use_amp = amp_enabled(tcfg, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_amp)
    if payload is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])  # one scaler for the whole run, mc members included
    progress = Progress(f"{dataset}/{variant.name}", total, start, enabled=ctx.is_main)
    run = Run(cfg=cfg, dataset=dataset, split=split, variant=variant, out=out, ctx=ctx, spec=spec,
              model=model,
              total=total, end=end, start=start, resumed=payload, inputs=inputs, init_total=init_total,
              bn_recalibration=bn_recal, batches=batches, scaler=scaler, use_amp=use_amp, log=train_log,
              progress=progress,
              iteration=start, final_loss=None if train_log is None else train_log.last_loss,
              elapsed_before=float(payload.get("elapsed_s", 0.0)) if payload else 0.0)
    return run


def amp_enabled(train_cfg: dict, device: torch.device) -> bool:
    """Mixed precision (float16 autocast + GradScaler): train.amp, on CUDA only."""
    return bool(train_cfg["amp"]) and device.type == "cuda"


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
    ckpt_path, resume_path, done_path = state_paths(out)
    path = resume_path if resume_path.exists() else ckpt_path
    if not path.exists():
        return None, None
    payload = load_checkpoint(path)
    _check_settings(payload, path, spec, cfg)
    reasons = stale_inputs(payload.get("inputs"), inputs)
    if reasons:
        if ctx.is_main:
            log.warning("not resuming from %s: %s; training restarts from scratch", path, "; ".join(reasons))
        _remove([resume_path, ckpt_path, done_path], ctx, "stale state")
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
                   ctx: DistContext, dataset: str, split: str) -> tuple[nn.Module, int, dict | None]:
    """The model on its device, initialised or restored from `payload` (with the RNG states), the
    iterations behind its starting point and its BN recalibration record (lc.training.bn_recalibration)."""
    seed = int(cfg["seed"])
    torch.manual_seed(seed)  # the same initial weights in every process
    np.random.seed(seed)
    model = build_model_from_spec(spec)
    if ctx.distributed and ctx.device.type == "cuda" and not spec["model_cfg"].get("freeze_bn", True):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if payload is None:
        init_total = initialise(model, cfg, variant, init)
        recal = bn_record(init)
    else:
        model.load_state_dict(payload["model"])
        init_total = int(payload.get("init_iterations_total", 0))
        recal = payload.get("bn_recalibration")
    model.to(ctx.device)
    if payload is None and init is None and variant.init_from == "imagenet" and recalibration_images(cfg):
        with torch.random.fork_rng(devices=[]):
            recal = recalibrate_start(model, cfg, dataset, split, ctx.device)
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
    return model, init_total, recal


def _batch_stream(cfg: dict, dataset: str, split: str, ctx: DistContext, start: int):
    """This process's training batches from iteration `start` on (see lc.training.distributed)."""
    tcfg, seed = cfg["train"], int(cfg["seed"])
    train_set = build_dataset(cfg, dataset, split, train=True)
    sampler = EpochSampler(len(train_set), tcfg["batch_size"] // ctx.world_size, seed, ctx.world_size,
                           ctx.rank)
    workers = int(tcfg["workers"])
    loader = DataLoader(SeededSamples(train_set, seed), batch_size=sampler.batch_size, sampler=sampler,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda", drop_last=True,
                        worker_init_fn=worker_init_fn, persistent_workers=workers > 0,
                        # its own generator: creating an iterator must not draw from the global stream
                        generator=seeded_generator(seed))
    return infinite_batches(loader, sampler, start)
