"""Reference weights of every variant on the test preset, to show a refactor of the training loop
changed no result: `python tests/train_reference.py record` writes tests/data/train_reference.json
(state-dict digests); tests/test_train.py compares the current code against it.

The runs: irnet pretraining from scratch, then dsn, dsn_dropout, lc and mc from that irnet
checkpoint, with the settings the loop had when the digests were recorded (region-normalised
losses, no ImageNet weights).

History: first recorded before the loop was restructured; the restructured loop, with every other
change of that round merged, reproduced all eight digests bitwise on the synthetic scenes of that
time. The digests were then re-recorded once, when the synthetic scene generators changed (new
training data, so new weights), and guard the loop from there on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

REFERENCE_FILE = Path(__file__).parent / "data" / "train_reference.json"
VARIANTS = ("irnet", "dsn", "dsn_dropout", "lc", "mc")
# settings added after the recording, at the values that reproduce the recorded behaviour
SAME_AS_RECORDED = {"model": {"pretrained": None},
                    "train": {"allow_scratch": True, "cascade_init": "irnet", "loss_normalization": "region"}}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else
                      tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def environment() -> dict:
    return {"torch": torch.__version__, "machine": platform.machine(), "threads": 1}


def reference_digests(cfg: dict, workdir: Path) -> dict[str, str]:
    """Train every variant on `cfg` (the test preset, data prepared) under `workdir`; variant -> digest."""
    from lc.training.loop import train

    cfg = copy.deepcopy(cfg)
    for section, values in SAME_AS_RECORDED.items():
        cfg[section].update(values)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        digests = {}
        irnet = workdir / "irnet"
        for variant in VARIANTS:
            init = None if variant == "irnet" else irnet / "checkpoint.pt"
            result = train(cfg, "voc", variant, workdir / variant, init=init, resume=False, device="cpu")
            digests[variant] = state_digest(result.model.state_dict())
        # at the test preset's scale rho routes (almost) every pixel on; with the half-routing stand-in
        # the routed variants differ from dsn, so their routing code paths are covered too
        with half_routing():
            for variant in ("dsn_dropout", "lc", "mc"):
                result = train(cfg, "voc", variant, workdir / f"{variant}_half", init=irnet / "checkpoint.pt",
                               resume=False, device="cpu")
                digests[f"{variant}_half_routing"] = state_digest(result.model.state_dict())
        return digests
    finally:
        torch.set_num_threads(threads)


def below_median_confidence(logits: torch.Tensor, rho: float) -> torch.Tensor:
    """Routing stand-in: the less confident half of each image's pixels goes on."""
    with torch.no_grad():
        confidence = logits.softmax(dim=1).amax(dim=1)
        return confidence < confidence.flatten(1).median(dim=1).values.view(-1, 1, 1)


@contextlib.contextmanager
def half_routing():
    import lc.models.cascade
    import lc.models.mc

    saved = lc.models.cascade.undecided_mask, lc.models.mc.undecided_mask
    lc.models.cascade.undecided_mask = lc.models.mc.undecided_mask = below_median_confidence
    try:
        yield
    finally:
        lc.models.cascade.undecided_mask, lc.models.mc.undecided_mask = saved


def _prepared_cfg(root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lc.config import load_config
    from lc.data.cityscapes import prepare_cityscapes  # noqa: F401 - only VOC is needed
    from lc.data.download import fetch_archive
    from lc.data.synthetic import make_synthetic_mirror
    from lc.data.voc import prepare_voc
    from lc.models.timm_weights import write_synthetic_weights

    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml", preset="test",
                      overrides={"data": {"root": str(root / "data"), "mirror": str(root / "mirror")},
                                 "results_root": str(root / "results")})
    make_synthetic_mirror(cfg)
    write_synthetic_weights(cfg, cfg["data"]["mirror"])
    for key in ("voc2012_trainval", "voc2012_test", "sbd"):
        fetch_archive(cfg, key)
    prepare_voc(cfg)
    return cfg


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _prepared_cfg(Path(tmp))
        digests = reference_digests(cfg, Path(tmp) / "runs")
    text = json.dumps({"environment": environment(), "digests": digests}, indent=2) + "\n"
    if sys.argv[1:] == ["record"]:
        REFERENCE_FILE.write_text(text)
    print(text)
