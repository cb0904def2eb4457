"""`lc config | synth | download | prepare`: the resolved config and the data sets."""

from __future__ import annotations

import argparse
import logging

from lc.cli.common import DATASETS
from lc.config import config_from_args

log = logging.getLogger(__name__)


def _cmd_config(args: argparse.Namespace) -> None:
    import yaml

    cfg = config_from_args(args)
    if args.sources:
        from lc.report.config_sources import load_sources, sources_markdown

        print(sources_markdown(cfg, load_sources()))
        return
    print(yaml.safe_dump(cfg, sort_keys=False))


def _cmd_synth(args: argparse.Namespace) -> None:
    from lc.data.synthetic import make_synthetic_mirror
    from lc.models.timm_weights import write_synthetic_weights

    cfg = config_from_args(args)
    if args.backbone is not None:  # the backbones experiment: only that backbone's ImageNet stand-in
        from lc.models.backbones import write_synthetic_backbone_weights

        print(f"{write_synthetic_backbone_weights(cfg, cfg['data']['mirror'])}  (sha256) weights")
        return
    for name, md5 in make_synthetic_mirror(cfg).items():
        print(f"{md5}  {cfg['data']['mirror']}/{name}")
    # the ImageNet stand-in in timm's layout, verified by its .sha256 when `lc weights` fetches it
    print(f"{write_synthetic_weights(cfg, cfg['data']['mirror'])}  (sha256) weights")


def _cmd_download(args: argparse.Namespace) -> None:
    from lc.data.download import fetch_archive

    fetch_archive(config_from_args(args), args.key, args.out)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from lc.data.cityscapes import prepare_cityscapes
    from lc.data.voc import prepare_voc

    prepare = {"voc": prepare_voc, "cityscapes": prepare_cityscapes}[args.dataset]
    for split, path in prepare(config_from_args(args), verify=args.verify).items():
        print(f"{split}: {path}")


def _cmd_weights(args: argparse.Namespace) -> None:
    from lc.data.weights import fetch_weights

    print(fetch_weights(config_from_args(args)))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", parents=[common],
                       help="print the resolved (preset-merged, validated) config")
    p.add_argument("--sources", action="store_true",
                   help="print where each setting comes from (lc/config.sources.yaml) as the README's table")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("weights", parents=[common],
                       help="fetch timm's ImageNet inception_resnet_v2 weights (SHA-256 verified) into "
                            "<data.root>/weights/")
    p.set_defaults(func=_cmd_weights)

    p = sub.add_parser("synth", parents=[common],
                       help="demo/test presets: write synthetic archives + MD5SUMS into data.mirror "
                            "(with --backbone: only that backbone's ImageNet stand-in)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("download", parents=[common],
                       help="fetch one archive of data.archives, MD5-verified (resumes, retries)")
    p.add_argument("key", help="archive key under data.archives (e.g. voc2012_trainval, sbd)")
    p.add_argument("--out", default=None, help="target file (default: <data.root>/archives/<filename>)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("prepare", parents=[common],
                       help="extract the archives and write the prepared labels and split lists")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--verify", action="store_true",
                   help="hash every archive again before use, trusting no cached digest (a file damaged in "
                        "place with its size and mtime restored passes the cache); the workflow passes it "
                        "for real (non-synthetic) data")
    p.set_defaults(func=_cmd_prepare)
