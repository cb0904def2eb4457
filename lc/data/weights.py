"""ImageNet weights of the IRNet pretraining (`lc weights`): timm's `inception_resnet_v2`.

`fetch_weights(cfg)` stores them at `lc.data.paths.weights_path(cfg)`
(<data.root>/weights/inception_resnet_v2.pth), from
- `<data.mirror>/inception_resnet_v2.pth` when a mirror is configured (a folder or http(s) base URL;
  the synthetic presets generate a checkpoint in timm's key layout there: `lc synth`, via
  `lc.models.timm_weights.write_synthetic_weights`);
- otherwise timm's own pretrained source: the Hugging Face hub file named by timm's pretrained
  config for `inception_resnet_v2.tf_in1k` (downloaded with huggingface_hub, as timm does).
The source file must match `model.pretrained_sha256` (synthetic presets: the digest the generator
wrote beside it, `<file>.sha256`); a file that does not is deleted and never used. The stored file
is a torch state dict written atomically, so a reader never sees a partial one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from lc.data.io import atomic_path, hash_file, write_text_atomic
from lc.data.paths import weights_path

__all__ = ["TIMM_MODEL", "WEIGHTS_FILENAME", "fetch_weights", "load_weights_file", "pretrained_file",
           "sha256_file"]

log = logging.getLogger(__name__)

TIMM_MODEL = "inception_resnet_v2.tf_in1k"
WEIGHTS_FILENAME = "inception_resnet_v2.pth"
_SOURCE_DIGEST_SUFFIX = ".source.sha256"  # beside the stored file: the verified source's digest


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    return hash_file(path, "sha256", chunk_bytes)


def pretrained_file(cfg: dict) -> Path | None:
    """The ImageNet checkpoint training loads: weights_path(cfg) for `timm`, the path given, or None."""
    value = cfg["model"].get("pretrained")
    if not value:
        return None
    return weights_path(cfg) if value == "timm" else Path(value)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch checkpoint (possibly nested under state_dict/model) or a safetensors file."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse error means the same to the user
            raise ValueError(f"{path} is neither a torch checkpoint nor a safetensors file "
                             f"({type(exc).__name__}); delete it and run `lc weights` again") from exc
    for key in ("state_dict", "model"):  # timm and training-script checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _expected_sha256(cfg: dict, source: str | None) -> str:
    pinned = cfg["model"].get("pretrained_sha256")
    if pinned:
        return str(pinned).lower()
    if cfg["data"].get("synthetic") and source:
        sidecar = _read_source(source + ".sha256")
        return sidecar.read_text().split()[0]
    timm_model = cfg["model"].get("timm_model", TIMM_MODEL)  # the backbone's (model.backbone)
    raise ValueError("model.pretrained_sha256 is null, so the ImageNet weights cannot be verified; set it to "
                     f"the SHA-256 of timm's file (`huggingface-cli download timm/{timm_model} "
                     "model.safetensors` then `sha256sum` it), or use model.pretrained: <path> for a file "
                     "you trust")


def _mirror(cfg: dict) -> str | None:
    mirror = cfg["data"].get("mirror")
    return None if not mirror else str(mirror)


# timm/inception_resnet_v2.tf_in1k at the commit that added model.safetensors (unchanged since)
TIMM_HUB_REVISION = "89854797f99e77e1189626b74d7c07013a4308fa"
_downloads: list[Path] = []  # temp files of this fetch, removed when it ends


def _read_source(location: str) -> Path:
    """A local path for `location` (a file, or an http(s) URL downloaded to a temp file)."""
    if not location.startswith(("http://", "https://")):
        path = Path(location)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; for a synthetic preset run `lc synth` first, "
                                    f"else place timm's {WEIGHTS_FILENAME} in data.mirror")
        return path
    import requests

    tmp = Path(tempfile.mkstemp(suffix=".download")[1])
    _downloads.append(tmp)
    try:
        with requests.get(location, stream=True, timeout=60) as response:
            response.raise_for_status()
            with open(tmp, "wb") as handle:
                for chunk in response.iter_content(1 << 20):
                    handle.write(chunk)
    except requests.RequestException as exc:
        raise FileNotFoundError(f"cannot download {location}: {exc}") from exc
    return tmp


def _hub_file(timm_model: str = TIMM_MODEL) -> Path:
    """timm's pretrained source for the backbone: the hub file its pretrained config names."""
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(timm_model)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        raise ValueError(f"timm has no hub configuration for {timm_model}; set data.mirror or "
                         "model.pretrained")
    # IRNet: the revision that added the file; every file: model.pretrained_sha256 pins its digest
    revision = TIMM_HUB_REVISION if timm_model == TIMM_MODEL else None
    return Path(hf_hub_download(repo_id=pretrained_cfg.hf_hub_id, filename="model.safetensors",
                                revision=revision))


def fetch_weights(cfg: dict) -> Path:
    """Verify and store the ImageNet weights at weights_path(cfg) (see the module docstring); its path.

    With model.pretrained a path, that file is verified (when a digest is pinned) and used in place.
    """
    value = cfg["model"].get("pretrained")
    if not value:
        raise ValueError("model.pretrained is null: there are no ImageNet weights to fetch (set it to timm)")
    if value != "timm":
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained = {path} does not exist")
        _verify(path, cfg["model"].get("pretrained_sha256"), f"model.pretrained = {path}")
        return path
    target = weights_path(cfg)
    mirror = _mirror(cfg)
    filename = cfg["model"].get("weights_file", WEIGHTS_FILENAME)  # per backbone (model.backbone)
    timm_model = cfg["model"].get("timm_model", TIMM_MODEL)
    mirror_file = f"{mirror.rstrip('/')}/{filename}" if mirror else None
    source_name = mirror_file or f"hub:timm/{timm_model}"
    expected = _expected_sha256(cfg, mirror_file)
    marker = target.with_name(target.name + _SOURCE_DIGEST_SUFFIX)
    if target.is_file() and marker.is_file() and marker.read_text().strip() == expected:
        log.info("%s is in place (source %s, sha256 %s)", target, source_name, expected)
        return target
    try:
        source = _read_source(mirror_file) if mirror_file else _hub_file(timm_model)
        _verify(source, expected, source_name)
        state = load_weights_file(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        if zipfile.is_zipfile(source):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        else:  # safetensors from the hub: stored as a torch state dict
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                torch.save(dict(state), handle)
        write_text_atomic(marker, expected + "\n")  # last: its presence means the file is complete
    finally:
        while _downloads:
            _downloads.pop().unlink(missing_ok=True)
    log.info("wrote %s from %s (sha256 %s verified)", target, source_name, expected)
    return target


def _verify(path: Path, expected: str | None, name: str) -> None:
    if not expected:
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ValueError(f"{name}: SHA-256 {actual} does not match model.pretrained_sha256 {expected}; the "
                         "file is damaged or not the pinned one (delete it and fetch again, or fix the key)")
