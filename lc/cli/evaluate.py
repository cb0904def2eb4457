"""`lc evaluate | sweep | export | analyze`: scoring, Table 1's sweep, test-set exports, analyses."""

from __future__ import annotations

import argparse

from lc.cli.common import (
    DATASETS,
    EVAL_SPLITS,
    add_device_argument,
    config_with_region,
    positive_int,
    rho_arg,
)

RHO_HELP = "routing threshold in (0, 1] (default: the checkpoint's)"

def _cmd_evaluate(args: argparse.Namespace) -> None:
    from lc.evaluation.evaluate import run_evaluation

    cfg = config_with_region(args)
    report = run_evaluation(cfg, args.checkpoint, args.dataset, args.split, args.out, rho=args.rho,
                            multi_scale=args.multi_scale, crf=args.crf, max_images=args.max_images,
                            device=args.device)
    share = " / ".join(f"{s:.1%}" for s in report["stage_share"])
    miou, accuracy = (float("nan") if v is None else v for v in (report["miou"], report["pixel_accuracy"]))
    print(f"{args.dataset} {args.split} {report['variant']}: mIoU {miou:.2f}%, pixel accuracy "
          f"{accuracy:.2f}% on {report['num_images']} images; decided at stages 1/2/3: "
          f"{share} (rho {report['rho']:g}); {report['ms_per_image']:.1f} ms/image; wrote {args.out}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from lc.evaluation.sweep import run_sweep

    cfg = config_with_region(args)
    table = run_sweep(cfg, args.checkpoint, args.dataset, args.split, args.out, rhos=args.rho,
                      max_images=args.max_images, device=args.device)
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print(f"wrote {args.out}")


def _cmd_export(args: argparse.Namespace) -> None:
    from lc.evaluation.export import run_export, summary_path

    cfg = config_with_region(args)
    summary = run_export(cfg, args.checkpoint, args.dataset, args.out, split=args.split, rho=args.rho,
                         multi_scale=args.multi_scale, crf=args.crf, device=args.device)
    print(f"{summary['num_images']} {args.dataset} {args.split} predictions: wrote {args.out} and "
          f"{summary_path(args.out)}")


def _cmd_analyze_difficulty(args: argparse.Namespace) -> None:
    from pathlib import Path

    from lc.evaluation.analysis import run_difficulty

    out_json = args.out_json or str(Path(args.out_csv).with_suffix(".json"))
    cfg = config_with_region(args)
    table, summary = run_difficulty(cfg, args.checkpoint, args.dataset, args.split, args.out_csv,
                                    out_json, max_images=args.max_images, device=args.device)
    print(table.to_string(index=False, float_format="{:.1f}".format))
    print(f"hard pixels within {summary['boundary_px']} px of a boundary: "
          f"{summary['hard_boundary_share']:.1%} "
          f"(that band holds {summary['band_pixel_share']:.1%} of the labelled pixels); "
          f"wrote {args.out_csv} and {out_json}")


def _cmd_analyze_stages(args: argparse.Namespace) -> None:
    from lc.evaluation.analysis import run_stage_examples

    cfg = config_with_region(args)
    path = run_stage_examples(cfg, args.checkpoint, args.dataset, args.out, split=args.split,
                              num_images=args.num_images, rho=args.rho, device=args.device)
    print(f"wrote {path}")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    def common(q: argparse.ArgumentParser, split: str, checkpoint: bool = True) -> None:
        if checkpoint:
            q.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `lc train`")
        q.add_argument("--dataset", required=True, choices=DATASETS)
        q.add_argument("--split", default=split, choices=EVAL_SPLITS,
                       help=f"prepared split (default: {split})")
        add_device_argument(q)

    def protocol(q: argparse.ArgumentParser) -> None:
        q.add_argument("--multi-scale", action="store_true",
                       help="fuse the views of evaluate.scales (and mirrored ones when evaluate.flip) by "
                            "evaluate.fusion")
        q.add_argument("--crf", action="store_true", help="dense CRF post-processing (evaluate.crf)")

    def rho(q: argparse.ArgumentParser) -> None:
        q.add_argument("--rho", type=rho_arg, default=None, help=RHO_HELP)

    def max_images(q: argparse.ArgumentParser) -> None:
        q.add_argument("--max-images", type=positive_int, default=None,
                       help="first N images only (default: evaluate.max_images)")

    p = sub.add_parser("evaluate", parents=[parent],
                       help="mIoU, per-class IoU, stage shares and timing of one checkpoint")
    common(p, "val")
    p.add_argument("--out", required=True, help="JSON report to write")
    rho(p)
    protocol(p)
    max_images(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", parents=[parent],
                       help="Table 1: stage shares and mIoU at every rho of evaluate.rho_sweep")
    common(p, "val", checkpoint=False)
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend",
                   help="one LC checkpoint (re-thresholded at every rho), or one per rho "
                        "(evaluate.sweep_retrain; repeat the option or list several)")
    p.add_argument("--rho", type=rho_arg, action="append", default=None,
                   help="threshold(s): with one checkpoint the rhos to sweep (default evaluate.rho_sweep); "
                        "with several, one per checkpoint (default: each checkpoint's own rho)")
    p.add_argument("--out", required=True, help="CSV to write")
    max_images(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("export", parents=[parent],
                       help="test-set predictions as the evaluation server's archive (+ .json)")
    common(p, "test")
    p.add_argument("--out", required=True, help="voc: .tar.gz (comp6 layout); cityscapes: .zip (labelIds)")
    rho(p)
    protocol(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("analyze", help="analyses for the figures: pixel difficulty, stage examples")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("difficulty", parents=[parent],
                         help="Fig. 1: easy/moderate/hard pixels per class of a baseline, "
                              "and the share of hard pixels near boundaries")
    common(q, "val")
    q.add_argument("--out-csv", "--out", required=True, dest="out_csv", help="per-class CSV")
    q.add_argument("--out-json", default=None, help="summary JSON (default: the CSV path with .json)")
    max_images(q)
    q.set_defaults(func=_cmd_analyze_difficulty)
    q = kinds.add_parser("stages", parents=[parent],
                         help="Figs. 4/6: stage masks and predictions of LC on a few images (.npz)")
    common(q, "val")
    q.add_argument("--out", required=True, help="npz to write (analysis/stage_examples_<dataset>.npz)")
    q.add_argument("--num-images", type=positive_int, default=4, help="how many images (default 4)")
    rho(q)
    q.set_defaults(func=_cmd_analyze_stages)
