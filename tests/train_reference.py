"""Reference results of every variant on the test preset, to show a refactor of the training loop
changed no result: `python tests/train_reference.py record` adds this machine's entry to
tests/data/train_reference.json; tests/test_train.py compares the current code against it.

Two kinds of reference:
- bitwise: state-dict digests of the float32 runs, keyed on everything that decides their bits
  (torch's version, the CPU's ATen capability (default/avx2/avx512), its vendor and model, the MKL
  and oneDNN versions, one thread). Compared only where a recorded key equals this machine's;
- both apply only to the training data they were made on (`data_digest`: the decoded pixels of the
  prepared synthetic VOC, which numpy, scipy and Pillow releases may change); elsewhere the test
  skips and says so;
- float64 summary: the same runs in float64 (`float64()`), per run the loss of every iteration and
  every tensor's norm, recorded once and compared on every machine within LOSS_RTOL / NORMS_RTOL.
  Measured here: emulating another CPU (ATEN_CPU_CAPABILITY=default, DNNL_MAX_CPU_ISA=AVX2,
  MKL_ENABLE_INSTRUCTIONS=AVX2) moved the losses by <= 1.2e-5 and the norms by <= 4e-6 (relative);
  a learning rate 0.1% off moved them by >= 1.7e-4 and 1e-3. (In float32 the few chaotic iterations
  of the test preset amplify the same reordering to percents: no tolerance separates them there.)
  tests/test_train.py shows that a changed learning rate and a skipped step fail the check.

The runs: irnet pretraining from scratch, then dsn, dsn_dropout, lc and mc from that irnet
checkpoint, with the settings the loop had when the digests were first recorded (region-normalised
losses, no ImageNet weights).

History: first recorded before the loop was restructured; the restructured loop, with every other
change of that round merged, reproduced all eight digests bitwise on the synthetic scenes of that
time. The digests were then re-recorded once, when the synthetic scene generators changed (new
training data, so new weights), and guard the loop from there on. Re-recorded (bitwise entry only)
when routed training moved to the stage plan (BN folded into the conv weights under autograd,
lc.models.region_plan): with `region.planned: false` the previous digests are reproduced bitwise, and
the float64 summary matches within its tolerance on the planned path. Re-recorded (bitwise entry
only) when the CPU kernel of `lc::gather_conv` became one gather and one GEMM per conv (im2col,
a different summation order) and CPU stages stopped padding to row buckets; the float64 summary
matches within its tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import platform
import re
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


def _cpu_model() -> str:
    """The CPU's vendor and model as the OS names them (/proc/cpuinfo; else platform.processor())."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    keys = ("vendor_id", "model name", "CPU implementer", "CPU part")  # x86; arm
    names = [fields[k] for k in keys if fields.get(k)]
    return " / ".join(names) or platform.processor() or "unknown"


def _build_version(pattern: str) -> str | None:
    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else None


def environment() -> dict:
    """What decides the bits of a one-thread CPU training run."""
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": _cpu_model(),
            "mkl": _build_version(r"Math Kernel Library Version (\S+)"),
            "onednn": _build_version(r"(?:MKL-DNN|oneDNN) v(\S+)"), "threads": 1}


def data_digest(cfg: dict) -> str:
    """SHA-256 over the decoded pixels of every VOC sample the prepared lists name (images and labels):
    the synthetic scenes come from numpy's Generator streams, scipy.ndimage and Pillow's JPEG codec,
    none of which promises the same pixels across releases; a reference applies only to its data."""
    import numpy as np
    from PIL import Image

    from lc.data.io import read_sample_list
    from lc.data.paths import data_root, prepared_list_files

    root = data_root(cfg)
    digest = hashlib.sha256()
    for split, path in sorted(prepared_list_files(cfg, "voc").items()):
        if not Path(path).exists():
            continue
        for row in read_sample_list(path):
            digest.update(f"{split}|{row[0]}|".encode())
            for rel in row[1:]:
                with Image.open(root / rel) as im:
                    pixels = np.asarray(im)
                digest.update(f"{pixels.dtype}|{pixels.shape}|".encode() + pixels.tobytes())
    return digest.hexdigest()


def data_versions() -> dict:
    """The versions of the packages that make the synthetic data, for the skip message."""
    import numpy
    import PIL
    import scipy

    return {"numpy": numpy.__version__, "scipy": scipy.__version__, "Pillow": PIL.__version__}


def run_summary(state: dict[str, torch.Tensor], log_file: Path) -> dict:
    """The loss of every logged iteration and every floating tensor's norm (float64), rounded to 9 digits."""
    with open(log_file, newline="") as handle:
        loss = [float(row["loss"]) for row in csv.DictReader(handle)]
    norms = {k: torch.linalg.vector_norm(v.detach().double()).item() for k, v in sorted(state.items())
             if v.is_floating_point()}
    return {"loss": [float(f"{x:.9g}") for x in loss],
            "norms": {k: float(f"{v:.9g}") for k, v in norms.items()}}


def reference_runs(cfg: dict, workdir: Path, variants: tuple[str, ...] = VARIANTS,
                   routed: tuple[str, ...] = ("dsn_dropout", "lc", "mc")) -> tuple[dict, dict]:
    """Train `variants` (irnet first: the others start from it) and the `routed` ones with half routing
    on `cfg` (the test preset, data prepared) under `workdir`; (run -> digest, run -> run_summary).
    Within `float64()` the runs are the float64 ones."""
    from lc.training.loop import train

    cfg = copy.deepcopy(cfg)
    for section, values in SAME_AS_RECORDED.items():
        cfg[section].update(values)
    cfg["train"]["log_every"] = 1  # every iteration's loss (logging changes no weight: same digests)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    digests, summaries = {}, {}
    try:
        irnet = workdir / "irnet"

        def run(name: str, variant: str) -> None:
            init = None if variant == "irnet" else irnet / "checkpoint.pt"
            result = train(cfg, "voc", variant, workdir / name, init=init, resume=False, device="cpu")
            state = result.model.state_dict()
            digests[name] = state_digest(state)
            summaries[name] = run_summary(state, workdir / name / "train_log.csv")

        for variant in ("irnet", *(v for v in variants if v != "irnet")):
            run(variant, variant)
        # at the test preset's scale rho routes (almost) every pixel on; with the half-routing stand-in
        # the routed variants differ from dsn, so their routing code paths are covered too
        with half_routing():
            for variant in routed:
                run(f"{variant}_half_routing", variant)
        return digests, summaries
    finally:
        torch.set_num_threads(threads)


def reference_digests(cfg: dict, workdir: Path) -> dict[str, str]:
    """Every variant's state-dict digest (see `reference_runs`)."""
    return reference_runs(cfg, workdir)[0]


@contextlib.contextmanager
def float64():
    """Train in float64: parameters made in float64, the loop's images cast to it before the forward."""
    import lc.training.loop as loop

    forward_loss, dtype = loop._forward_loss, torch.get_default_dtype()

    def forward_loss_float64(run, phase, trained, images, labels):
        return forward_loss(run, phase, trained, images.double(), labels)

    loop._forward_loss = forward_loss_float64
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        loop._forward_loss = forward_loss
        torch.set_default_dtype(dtype)


LOSS_RTOL = 1e-4  # each iteration's loss, relative
NORMS_RTOL = 5e-5  # the vector of per-tensor norms of a run: |now - recorded| / |recorded|


def summary_mismatches(recorded: dict, current: dict) -> list[str]:
    """Where `current` (run -> run_summary) leaves the recorded summaries; empty when it matches."""
    problems = []
    for name, now in current.items():
        then = recorded.get(name)
        if then is None:
            problems.append(f"{name}: no recorded summary")
            continue
        if len(now["loss"]) != len(then["loss"]):
            problems.append(f"{name}: {len(now['loss'])} logged iterations, recorded {len(then['loss'])}")
        for i, (a, b) in enumerate(zip(now["loss"], then["loss"], strict=False)):
            if not math.isclose(a, b, rel_tol=LOSS_RTOL):
                problems.append(f"{name}: loss at iteration {i + 1} is {a:.9g}, recorded {b:.9g}")
        if now["norms"].keys() != then["norms"].keys():
            problems.append(f"{name}: its tensors differ from the recorded ones")
            continue
        diff = math.sqrt(sum((now["norms"][k] - v) ** 2 for k, v in then["norms"].items()))
        scale = math.sqrt(sum(v * v for v in then["norms"].values()))
        if diff > NORMS_RTOL * scale:
            worst = max(then["norms"], key=lambda k: abs(now["norms"][k] - then["norms"][k]))
            problems.append(f"{name}: per-tensor norms {diff / scale:.2e} (relative) from the recorded ones, "
                            f"most at {worst} ({now['norms'][worst]:.9g}, "
                            f"recorded {then['norms'][worst]:.9g})")
    return problems


def float64_summaries(cfg: dict, workdir: Path, **runs) -> dict:
    """run -> run_summary of the float64 runs (`reference_runs` arguments)."""
    with float64():
        return reference_runs(cfg, workdir, **runs)[1]


def bitwise_reference(recorded: dict, env: dict | None = None) -> dict[str, str] | None:
    """The digests recorded on a machine like this one (same `environment()`), else None."""
    env = environment() if env is None else env
    return next((entry["digests"] for entry in recorded["bitwise"] if entry["environment"] == env), None)


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

    recorded = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {"bitwise": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _prepared_cfg(Path(tmp))
        data = data_digest(cfg)
        if sys.argv[1:] == ["data-digest"]:  # only the digest of this machine's synthetic data
            print(json.dumps({"data_digest": data, **data_versions()}))
            sys.exit(0)
        digests = reference_digests(cfg, Path(tmp) / "float32")
        summaries = float64_summaries(cfg, Path(tmp) / "float64")
    env = environment()
    print(json.dumps({"environment": env, "digests": digests}, indent=2))
    if recorded.get("data_digest", data) != data:
        print("other training data than the recorded ones (numpy, scipy or Pillow made other pixels): "
              "`record` replaces the whole reference")
        recorded = {"bitwise": []}
    if "float64_summary" in recorded:
        print("\n".join(summary_mismatches(recorded["float64_summary"]["runs"], summaries))
              or "float64 summary: matches the recorded one")
    if sys.argv[1:] == ["record"]:  # this machine's digests; the float64 summary only where none is recorded
        recorded["data_digest"] = data
        recorded["bitwise"] = [e for e in recorded["bitwise"] if e["environment"] != env]
        recorded["bitwise"].append({"environment": env, "digests": digests})
        recorded.setdefault("float64_summary", {"environment": env, "runs": summaries})
        REFERENCE_FILE.write_text(json.dumps(recorded, indent=2) + "\n")
