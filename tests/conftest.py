"""Shared fixtures: the test preset with its synthetic data sets prepared once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prepared_test_cfg(tmp_path_factory) -> dict:
    """The resolved `test` preset with synthetic VOC and Cityscapes prepared under a temp folder.

    Results go to a temp folder too. Treat the dict as read-only (copy.deepcopy before changing it).
    """
    from lc.config import load_config
    from lc.data.cityscapes import prepare_cityscapes
    from lc.data.download import fetch_archive
    from lc.data.synthetic import make_synthetic_mirror
    from lc.data.voc import prepare_voc
    from lc.data.weights import fetch_weights
    from lc.models.timm_weights import write_synthetic_weights

    root = tmp_path_factory.mktemp("lc_test_data")
    cfg = load_config(REPO / "config.yaml", preset="test",
                      overrides={"data": {"root": str(root / "data"), "mirror": str(root / "mirror")},
                                 "results_root": str(root / "results")})
    make_synthetic_mirror(cfg)
    write_synthetic_weights(cfg, cfg["data"]["mirror"])
    for key in ("voc2012_trainval", "voc2012_test", "sbd", "cityscapes_gtfine", "cityscapes_leftimg8bit"):
        fetch_archive(cfg, key)
    prepare_voc(cfg)
    prepare_cityscapes(cfg)
    fetch_weights(cfg)  # the synthetic ImageNet stand-in the irnet pretraining starts from
    return cfg
