"""timm's `inception_resnet_v2` state dicts and IRNet: loading them (any width, any block counts
up to timm's, blocks chosen by model.timm_blocks) and a deterministic stand-in in the same layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lc.data.io import atomic_path, write_text_atomic
from lc.data.weights import WEIGHTS_FILENAME, sha256_file
from lc.models.irnet import STAGE_LAYERS, IRNet

__all__ = ["TIMM_BLOCK_CHOICES", "TIMM_BLOCK_COUNTS", "load_checked", "load_timm_weights",
           "timm_block_indices", "synthetic_statistics", "timm_layout_state_dict"]

TIMM_BLOCK_COUNTS = (10, 20, 10)  # timm's inception_resnet_v2: Block35 / Block17 / Block8 repeats
TIMM_BLOCK_CHOICES = ("first", "even")
_GROUPS = ("repeat", "repeat_1", "repeat_2")  # repeat_2 holds all Block8s but the last (`block8`)


def timm_block_indices(ours: int, theirs: int, choice: str) -> list[int]:
    """Which of a checkpoint's `theirs` blocks fill our `ours` (model.timm_blocks).

    first: blocks 0 .. ours-1; even: evenly strided, floor(i * theirs / ours) (10 -> 5: 0, 2, 4, 6, 8).
    """
    if choice not in TIMM_BLOCK_CHOICES:
        raise ValueError(f"model.timm_blocks must be one of {TIMM_BLOCK_CHOICES}, got {choice!r}")
    if ours > theirs:
        raise ValueError(f"the model has {ours} blocks in a group where the checkpoint has {theirs}")
    if choice == "first":
        return list(range(ours))
    return [i * theirs // ours for i in range(ours)]


def _group_counts(keys) -> dict[str, int]:
    counts = dict.fromkeys(_GROUPS, 0)
    for key in keys:
        parts = key.split(".")
        if parts[0] in counts and len(parts) > 1 and parts[1].isdigit():
            counts[parts[0]] = max(counts[parts[0]], int(parts[1]) + 1)
    return counts


def load_timm_weights(model: IRNet, state_dict: dict[str, torch.Tensor],
                      blocks: str = "first") -> dict[str, list[str]]:
    """Load a timm `inception_resnet_v2` state dict (any width); fail loudly on any unmatched tensor.

    When our block counts are smaller than the checkpoint's (timm: 10/20/10), `blocks` chooses which
    of its blocks we take (`timm_block_indices`); the others, the ImageNet classifier (`classif.*`)
    and the modules of stages a truncated trunk lacks are skipped and reported. BatchNorm running
    statistics load with the rest, so frozen BN uses the checkpoint's statistics.
    Returns {"loaded": [...], "skipped": [...]}.
    """
    ours = model.state_dict()
    theirs_counts = _group_counts(state_dict)
    our_counts = _group_counts(ours)
    source_of: dict[tuple[str, int], int] = {}  # (group, checkpoint block) -> our block
    for group in _GROUPS:
        for our_index, their_index in enumerate(timm_block_indices(our_counts[group], theirs_counts[group],
                                                                   blocks)):
            source_of[(group, their_index)] = our_index
    renamed, skipped = {}, []
    our_modules = {key.split(".")[0] for key in ours}
    absent = {name for stage in STAGE_LAYERS.values() for name in stage} - our_modules
    for key, tensor in state_dict.items():
        # the classifier, and the later stages a truncated trunk (a Model Cascade member) lacks
        if key.startswith(("classif.", "fc.", "last_linear.")) or key.split(".")[0] in absent:
            skipped.append(key)
            continue
        parts = key.split(".")
        if parts[0] in _GROUPS and len(parts) > 1 and parts[1].isdigit():
            target = source_of.get((parts[0], int(parts[1])))
            if target is None:
                skipped.append(key)
                continue
            key = ".".join([parts[0], str(target), *parts[2:]])
        renamed[key] = tensor
    return load_checked(model, renamed, skipped, "timm checkpoint does not match IRNet", "model.width_mult",
                        skip_unknown=False)


def load_checked(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], skipped: list[str],
                 subject: str, hint: str, skip_unknown: bool) -> dict[str, list[str]]:
    """Load `tensors` (named as `module`'s) strictly: every tensor of `module` found with its shape.

    A name `module` lacks is added to `skipped` (`skip_unknown`) or is a problem; all problems raise
    one ValueError ("<subject> (N problems; same <hint> as the checkpoint?)"). Returns
    {"loaded": [...], "skipped": [...]}.
    """
    ours = module.state_dict()
    mapped, problems = {}, []
    for key, tensor in tensors.items():
        if key not in ours:
            if skip_unknown:
                skipped.append(key)
            else:
                problems.append(f"unexpected tensor {key} {tuple(tensor.shape)}")
        elif ours[key].shape != tensor.shape:
            problems.append(f"shape mismatch {key}: ours {tuple(ours[key].shape)}, "
                            f"checkpoint {tuple(tensor.shape)}")
        else:
            mapped[key] = tensor
    problems += [f"missing tensor {k}" for k in ours if k not in mapped]
    if problems:
        head = "\n  ".join(problems[:20])
        raise ValueError(f"{subject} ({len(problems)} problems; same {hint} as the checkpoint?):\n  {head}")
    module.load_state_dict(mapped, strict=True)
    return {"loaded": sorted(mapped), "skipped": skipped}


def synthetic_statistics(net: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`net`'s state dict with plausible BatchNorm running statistics drawn from `generator` (the
    synthetic stand-in for ImageNet weights; the draws follow the state dict's order)."""
    state = {}
    for key, tensor in net.state_dict().items():
        if key.endswith("running_mean"):
            tensor = torch.randn(tensor.shape, generator=generator) * 0.05
        elif key.endswith("running_var"):
            tensor = 0.8 + 0.4 * torch.rand(tensor.shape, generator=generator)
        state[key] = tensor.clone()
    return state


def timm_layout_state_dict(width_mult: float, num_classes: int = 1000,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic stand-in for timm's ImageNet checkpoint at `width_mult`: timm's key layout
    (10/20/10 blocks, `classif`), random weights and non-trivial BatchNorm statistics.

    The synthetic presets load it through the same code as the real weights (lc.data.weights).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = IRNet(width_mult=width_mult, block_counts=TIMM_BLOCK_COUNTS, output_stride=32,
                    stem_padding="valid")
    state = synthetic_statistics(net, generator)
    features = net.stage_channels[2]
    state["classif.weight"] = torch.randn(num_classes, features, generator=generator) * 0.01
    state["classif.bias"] = torch.zeros(num_classes)
    return state


def write_synthetic_weights(cfg: dict, mirror: str | Path) -> str:
    """Synthetic presets (`lc synth`): a stand-in for timm's checkpoint at model.width_mult into
    `mirror`, with its SHA-256 beside it (`<file>.sha256`); returns the digest. Deterministic (seeded
    by cfg["seed"]); `lc.data.weights.fetch_weights` then fetches it like the real file."""
    state = timm_layout_state_dict(float(cfg["model"]["width_mult"]), seed=int(cfg["seed"]))
    path = Path(mirror) / WEIGHTS_FILENAME
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    digest = sha256_file(path)
    write_text_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {WEIGHTS_FILENAME}\n")
    return digest
