"""One training loop for every variant: irnet, dsn, dsn_dropout, lc and mc (`lc train`).

In the manner of torchvision's segmentation reference: SGD with momentum and weight decay, a poly
learning rate per iteration (heads at lr x train.head_lr_mult), iteration based, mixed precision
on CUDA (train.amp), DistributedDataParallel under torchrun. Per variant:
- irnet: the single-loss baseline (loss after stage 3); BN frozen or trained (train.pretrain_bn);
  the backbone starts from ImageNet weights when model.pretrained names a timm checkpoint file;
- dsn, dsn_dropout, lc: start from the pretrained irnet checkpoint (`init`, init_from_irnet), BN as
  model.freeze_bn; losses after every stage, stages 2 and 3 only on the pixels routed to them
  (lc.training.losses). Without `init` they start from model.pretrained, or from scratch;
- mc: the three Model Cascade members are trained in turn, train.iterations.mc iterations each,
  member k only on the pixels members < k pass on (ModelCascade.passed_mask). Our choice: with
  `init`, every member starts from the pretrained IRNet's stages it has (member 2 also from its
  head, being the same network), which is the starting point LC gets; the other heads start fresh.

<out>/resume.pt is written atomically every train.checkpoint_every iterations, <out>/checkpoint.pt at
the end; by default a run continues from resume.pt, and ends with the weights an uninterrupted run
would have.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lc.data import NUM_CLASSES, build_dataset, seeded_generator, worker_init_fn
from lc.data.io import write_text_atomic
from lc.models.cascade import init_from_irnet
from lc.models.irnet import load_timm_weights
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
from lc.training.losses import cascade_loss
from lc.training.train_log import LOG_COLUMNS, MetricWindow, TrainLog

__all__ = ["LOG_COLUMNS", "TRAIN_VARIANTS", "TrainResult", "poly_lr_factor", "total_iterations", "train"]

TRAIN_VARIANTS = ("irnet", "dsn", "dsn_dropout", "lc", "mc")
# train.* settings that change the trained weights: a resumed run must have been started with them
RESULT_SETTINGS = ("optimizer", "crop_size", "batch_size", "iterations", "lr", "head_lr_mult", "momentum",
                   "weight_decay", "poly_power", "scale_range", "pretrain_bn", "amp", "stage_loss_weights")
ROUTED_VARIANTS = ("lc", "dsn_dropout")  # parameters of later stages may go unused in a forward


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


def total_iterations(cfg: dict, variant: str) -> int:
    """All iterations of a run (mc: the three members together)."""
    its = cfg["train"]["iterations"]
    return {"irnet": its["pretrain"], "mc": 3 * its["mc"]}.get(variant, its["cascade"])


def poly_lr_factor(iteration: int, total: int, power: float) -> float:
    """(1 - iteration / total) ** power: the factor on the base learning rate at `iteration`."""
    return (1.0 - iteration / total) ** power


def _model_spec(cfg: dict, dataset: str, variant: str, rho: float) -> dict:
    model_cfg = dict(cfg["model"])
    if variant == "irnet":
        model_cfg["freeze_bn"] = cfg["train"]["pretrain_bn"] == "frozen"
    return make_model_spec("mc" if variant == "mc" else "cascade", variant, NUM_CLASSES[dataset], model_cfg,
                           rho, depth=3, dataset=dataset)


def _load_imagenet(model: nn.Module, cfg: dict) -> None:
    path = cfg["model"].get("pretrained")
    if not path:
        return
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.pretrained = {path} does not exist; place a timm inception_resnet_v2 "
                                "checkpoint there or set model.pretrained: null to train from scratch")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # timm and training-script checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    load_timm_weights(model.backbone, state)


def _irnet_weights(init: str | Path) -> dict[str, torch.Tensor]:
    payload = load_checkpoint(init)
    spec = payload["model_spec"]
    if spec.get("kind") != "cascade" or spec.get("variant") != "irnet" or spec.get("depth") != 3:
        raise CheckpointError(f"--init {init} holds a {spec.get('kind')}/{spec.get('variant')} model; the "
                              "cascade variants start from the pretrained irnet checkpoint "
                              "(runs/<dataset>/irnet/)")
    return payload["model"]


def _initialise(model: nn.Module, cfg: dict, variant: str, init: str | Path | None) -> None:
    """Starting weights of a fresh run (see the module docstring)."""
    if variant == "irnet":
        if init is not None:
            raise ValueError("the irnet variant is the pretraining: it starts from model.pretrained "
                             "(ImageNet), not from --init")
        _load_imagenet(model, cfg)
    elif init is None:
        _load_imagenet(model, cfg)
    elif variant == "mc":
        weights = _irnet_weights(init)
        for member in model.members:
            ours = member.state_dict()
            missing = [k for k in ours if k.startswith("backbone.") and k not in weights]
            misfit = [k for k in ours if k in weights and weights[k].shape != ours[k].shape]
            if missing or misfit:
                raise CheckpointError(f"--init {init} does not fit the Model Cascade members (missing "
                                      f"{missing[:5]}, shape mismatch {misfit[:5]}); train irnet with the "
                                      "same model settings")
            member.load_state_dict({k: v for k, v in weights.items() if k in ours}, strict=False)
    else:
        init_from_irnet(model, _irnet_weights(init))


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


def _check_resumable(payload: dict, path: Path, spec: dict, cfg: dict) -> None:
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


def train(cfg: dict, dataset: str, variant: str, out_dir: str | Path, init: str | Path | None = None,
          resume: bool = True, device: str | torch.device | None = None, rho: float | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train `variant` on `dataset`, writing <out_dir>/{checkpoint.pt, train_log.csv, train_done.json}.

    init: the pretrained irnet checkpoint the cascade variants start from; resume: continue from
    <out_dir>/resume.pt (else a finished checkpoint.pt) when present; device: overrides cfg["device"];
    rho: overrides train.rho
    (the routing threshold while training); stop_after: checkpoint and return once this many
    iterations are done (time-limited jobs, tests); a later call resumes.
    """
    if variant not in TRAIN_VARIANTS:
        raise ValueError(f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")
    wall_start = time.perf_counter()
    ctx = setup_distributed(device if device is not None else cfg.get("device", "auto"))
    try:
        result = _run(cfg, dataset, variant, Path(out_dir), init, resume, ctx, rho, stop_after, wall_start)
    except BaseException:
        teardown_distributed(ctx, wait=False)  # the other processes may never reach a barrier
        raise
    teardown_distributed(ctx)
    return result


def _run(cfg: dict, dataset: str, variant: str, out: Path, init, resume: bool, ctx: DistContext,
         rho: float | None, stop_after: int | None, wall_start: float) -> TrainResult:
    tcfg = cfg["train"]
    total = total_iterations(cfg, variant)
    per_member = tcfg["iterations"]["mc"]
    spec = _model_spec(cfg, dataset, variant, float(tcfg["rho"] if rho is None else rho))
    # The rolling state lives in resume.pt, not in the declared output checkpoint.pt: Snakemake deletes
    # a failed job's outputs, which would otherwise throw the resumable state away.
    ckpt_path, resume_path, done_path = out / "checkpoint.pt", out / "resume.pt", out / "train_done.json"
    if tcfg["batch_size"] % ctx.world_size:
        raise ValueError(f"train.batch_size {tcfg['batch_size']} (the global minibatch) must be divisible by "
                         f"the {ctx.world_size} processes")
    use_amp = bool(tcfg["amp"]) and ctx.device.type == "cuda"

    resume_from = (resume_path if resume_path.exists() else ckpt_path) if resume else None
    model, payload = _prepare_model(cfg, variant, spec, init, resume_from, ctx)
    start = int(payload["iteration"]) if payload else 0
    elapsed_before = float(payload.get("elapsed_s", 0.0)) if payload else 0.0
    batches = _batch_stream(cfg, dataset, ctx, start)

    end = total if stop_after is None else min(total, max(stop_after, start))
    final_loss = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if start < end:
            done_path.unlink(missing_ok=True)  # stale until this run completes
        log = TrainLog(out / "train_log.csv", start)
        final_loss = log.last_loss
    member = min(start // per_member, 2) if variant == "mc" else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    optimizer, trained = _trainable(model, variant, member, tcfg, ctx)
    if payload is not None and payload.get("optimizer") is not None and payload.get("mc_member") == member:
        optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])

    weights = tcfg["stage_loss_weights"]
    window = MetricWindow(ctx.device)
    run_start = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc=f"train {dataset}/{variant}", unit="it", file=sys.stderr,
               disable=not ctx.is_main, dynamic_ncols=True)
    iteration = start
    while iteration < end:
        if variant == "mc" and iteration // per_member != member:  # the next member starts afresh
            member = iteration // per_member
            optimizer, trained = _trainable(model, variant, member, tcfg, ctx)
        local, span = (iteration - member * per_member, per_member) if variant == "mc" else (iteration, total)
        factor = poly_lr_factor(local, span, float(tcfg["poly_power"]))
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

        batch = next(batches)
        images = batch["image"].to(ctx.device, non_blocking=True)
        labels = batch["label"].to(ctx.device, non_blocking=True)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
            losses = _forward_loss(model, trained, variant, member, images, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses.total).backward()
        scaler.step(optimizer)
        scaler.update()
        window.add(losses.total, losses.stage_loss, losses.stage_fraction)
        iteration += 1
        bar.update(1)

        member_done = variant == "mc" and iteration % per_member == 0
        if iteration % int(tcfg["log_every"]) == 0 or iteration == end or member_done:
            means = window.means(ctx)
            final_loss = means[0]
            if final_loss is not None and not np.isfinite(final_loss):
                raise FloatingPointError(f"training loss is {final_loss} at iteration {iteration} of "
                                         f"{dataset}/{variant}; lower train.lr")
            seconds = elapsed_before + time.perf_counter() - run_start
            if ctx.is_main:
                row = [iteration, optimizer.param_groups[0]["lr"], *means, seconds]
                log.append(dict(zip(LOG_COLUMNS, row, strict=True)))
                bar.set_postfix(loss=f"{final_loss:.4f}")
        if iteration % int(tcfg["checkpoint_every"]) == 0 or iteration == end or member_done:
            state = {"iteration": iteration, "elapsed_s": elapsed_before + time.perf_counter() - run_start,
                     "optimizer": optimizer.state_dict(), "mc_member": member,
                     "scaler": scaler.state_dict() if use_amp else None}
            _save(ckpt_path if iteration >= total else resume_path, model, spec, cfg, state, ctx)
    bar.close()
    if ctx.is_main and iteration >= total:
        resume_path.unlink(missing_ok=True)

    train_seconds = elapsed_before + time.perf_counter() - run_start
    if ctx.is_main and iteration >= total and (start < total or not done_path.exists()):
        summary = {"dataset": dataset, "variant": variant, "preset": cfg.get("preset"),
                   "iterations": iteration, "final_loss": final_loss, "device": str(ctx.device),
                   "world_size": ctx.world_size, "wall_time_s": round(train_seconds, 3),
                   "checkpoint": str(ckpt_path)}
        write_text_atomic(done_path, json.dumps(summary, indent=2) + "\n")
    return TrainResult(model=model.eval(), iterations=iteration, final_loss=final_loss,
                       device=str(ctx.device), world_size=ctx.world_size, rank=ctx.rank,
                       wall_time_s=time.perf_counter() - wall_start, checkpoint=ckpt_path)


def _prepare_model(cfg: dict, variant: str, spec: dict, init, resume_from: Path | None,
                   ctx: DistContext) -> tuple[nn.Module, dict | None]:
    """The model on its device, initialised or restored from `resume_from` (with the RNG states)."""
    seed = int(cfg["seed"])
    torch.manual_seed(seed)  # the same initial weights in every process
    np.random.seed(seed)
    model = build_model_from_spec(spec)
    if ctx.distributed and ctx.device.type == "cuda" and not spec["model_cfg"].get("freeze_bn", True):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    payload = load_checkpoint(resume_from) if resume_from is not None and resume_from.exists() else None
    if payload is None:
        _initialise(model, cfg, variant, init)
    else:
        _check_resumable(payload, resume_from, spec, cfg)
        model.load_state_dict(payload["model"])
    model.to(ctx.device)
    torch.manual_seed(seed + ctx.rank)  # per-process stream for the model's own randomness (dsn_dropout)
    if payload is not None:
        states = payload.get("rng") or []
        if len(states) == ctx.world_size:
            restore_rng_state(states[ctx.rank])
        elif ctx.is_main:
            print(f"lc train: {resume_from} was written by {len(states)} processes, this run has "
                  f"{ctx.world_size}; random streams restart (the data order does not)", file=sys.stderr)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size
    return model, payload


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


def _trainable(model: nn.Module, variant: str, member: int | None, tcfg: dict,
               ctx: DistContext) -> tuple[torch.optim.Optimizer, nn.Module]:
    """The optimizer and the (DDP-wrapped when distributed) module trained now (mc: one member)."""
    module = model
    model.train()
    if variant == "mc":
        model.eval()  # the earlier members only route (passed_mask)
        module = model.members[member].train()
    optimizer = _optimizer(module, tcfg)
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=device_ids,
                                         find_unused_parameters=variant in ROUTED_VARIANTS)
    return optimizer, module


def _forward_loss(model: nn.Module, trained: nn.Module, variant: str, member: int | None,
                  images: torch.Tensor, labels: torch.Tensor, weights):
    if variant != "mc":
        out = trained(images)
        loss_stages = [2] if variant == "irnet" else [0, 1, 2]
        return cascade_loss(out.stage_logits, out.stage_masks, labels, weights, loss_stages)
    passed = model.passed_mask(images, member)
    out = trained(images, execution="dense")
    masks: list = [None, None, None]
    masks[member] = passed
    return cascade_loss(out.stage_logits, masks, labels, [1.0, 1.0, 1.0], [member])


def _save(path: Path, model: nn.Module, spec: dict, cfg: dict, state: dict, ctx: DistContext) -> None:
    """Gather every process's RNG state; the main process writes the checkpoint."""
    rng = [capture_rng_state()]
    if ctx.distributed:
        rng = [None] * ctx.world_size
        dist.all_gather_object(rng, capture_rng_state())
    if ctx.is_main:
        save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "config": cfg, "rng": rng,
                               **state})
