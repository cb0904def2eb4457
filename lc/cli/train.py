"""`lc train`: train one variant (torchrun for several processes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lc.cli.common import (
    DATASETS,
    VARIANT_NAMES,
    add_device_argument,
    config_with_region,
    positive_int,
    rho_arg,
)
from lc.config import config_from_args
from lc.training.run_folder import RunFolderLock, is_main_process, remove_state


def _cmd_train(args: argparse.Namespace) -> None:
    # Before anything slow (torch, the config): lock the run folder, then, for --no-resume, remove the
    # old state, so that a run killed in its first seconds never leaves an old model looking done.
    main_process = is_main_process()
    with RunFolderLock(args.out, enabled=main_process):
        if args.no_resume and main_process:
            remove_state(Path(args.out))
        from lc.training.loop import train
        from lc.training.preempt import EXIT_RESUBMIT, Preempted, StopRequest

        try:
            with StopRequest(args.stop_before_limit) as stop:
                result = train(config_with_region(args), args.dataset, args.variant, args.out,
                               init=args.init, resume=not args.no_resume, device=args.device, rho=args.rho,
                               stop_after=args.stop_after, split=args.split, stop=stop)
        except Preempted as exc:
            print(f"lc train: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_RESUBMIT) from None
    if result.rank == 0:
        where = result.checkpoint if result.checkpoint.exists() else "nothing written yet"
        early = " (stopped early: run the same command again to continue)" \
            if result.checkpoint.name != "checkpoint.pt" else ""
        print(f"{args.dataset}/{args.variant}: {result.iterations} iterations, final loss "
              f"{result.final_loss}, {where}{early}")


def _cmd_recalibrate_bn(args: argparse.Namespace) -> None:
    from lc.device import resolve_device
    from lc.training.bn_recalibration import run_bn_recalibration

    cfg = config_from_args(args)
    device = resolve_device(args.device or cfg.get("device"))
    record = run_bn_recalibration(cfg, args.dataset, args.out, device, split=args.split)
    print(f"{args.dataset}: BatchNorm of {record['layers']} layers recalibrated over {record['images']} "
          f"images, {args.out}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common],
                       help="train one variant (torchrun for several processes); resumes by default")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--variant", required=True, choices=VARIANT_NAMES)
    p.add_argument("--split", default="train", choices=("train", "train_aug", "trainval_aug"),
                   help="prepared split to train on (default train = VOC's train_aug; trainval_aug: the VOC "
                        "test-server model, evaluate.export_train_split)")
    p.add_argument("--out", required=True,
                   help="run folder: resume.pt (rolling state), checkpoint.pt, train_log.csv, "
                        "train_done.json")
    p.add_argument("--init", default=None,
                   help="checkpoint the cascade variants start from (irnet; dsn for lc/dsn_dropout with "
                        "train.cascade_init: dsn); irnet: `lc recalibrate-bn`'s output")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh instead of continuing from OUT/resume.pt (the rolling training state "
                        "written every train.checkpoint_every iterations): first removes OUT/resume.pt, "
                        "OUT/checkpoint.pt and OUT/train_done.json")
    p.add_argument("--rho", type=rho_arg, default=None,
                   help="routing threshold in (0, 1] while training (default: train.rho)")
    add_device_argument(p)
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="checkpoint and exit after this many iterations (a later call resumes)")
    p.add_argument("--stop-before-limit", type=int, default=300, metavar="SECONDS",
                   help="inside a SLURM job with a time limit: write resume.pt and exit with code 75 this "
                        "many seconds before the limit (0: off); SIGUSR1/SIGTERM do the same at once "
                        "(default 300)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("recalibrate-bn", parents=[common],
                       help="ImageNet weights with BatchNorm recalibrated over train.bn_recalibration_images "
                            "training images: the IRNet pretraining's --init")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--split", default="train", choices=("train", "train_aug", "trainval_aug"))
    p.add_argument("--out", required=True, help="checkpoint to write")
    add_device_argument(p)
    p.set_defaults(func=_cmd_recalibrate_bn)
