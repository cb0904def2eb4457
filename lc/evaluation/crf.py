"""Dense CRF post-processing (Krähenbühl & Koltun's fully connected CRF, through pydensecrf2).

DeepLab's recipe, which the paper's Table 6 follows: the unary is -log of the network's class
probabilities at full image resolution; a Gaussian (smoothness) kernel on positions and a bilateral
(appearance) kernel on positions and the RGB colour of the original, denormalised image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["CRF_KEYS", "dense_crf", "dense_crf_probs"]

CRF_KEYS = ("iterations", "gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb",
            "bilateral_compat")
# Probabilities are clipped before the log so that a class the network rules out entirely
# (p = 0 in float32) gets a large but finite energy, which the pairwise terms can still overrule.
_MIN_PROB = 1e-8


def _check(image: np.ndarray, probs: np.ndarray, crf_cfg: Mapping) -> None:
    missing = [key for key in CRF_KEYS if key not in crf_cfg]
    if missing:
        raise ValueError(f"evaluate.crf lacks {missing}; config.yaml lists {list(CRF_KEYS)}")
    if probs.ndim != 3:
        raise ValueError(f"dense CRF expects probabilities (K, H, W), got shape {probs.shape}")
    if image.shape != (probs.shape[1], probs.shape[2], 3) or image.dtype != np.uint8:
        raise ValueError(f"dense CRF expects a uint8 (H, W, 3) image of the probabilities' size "
                         f"{probs.shape[1:]}, got {image.dtype} {image.shape}")


def dense_crf_probs(image: np.ndarray, probs: np.ndarray, crf_cfg: Mapping) -> np.ndarray:
    """Mean-field marginals (K, H, W) float32 after `crf_cfg["iterations"]` steps.

    image: uint8 (H, W, 3) RGB; probs: (K, H, W) class probabilities (each pixel sums to 1);
    crf_cfg: the `evaluate.crf` section (`CRF_KEYS`).
    """
    import pydensecrf.densecrf as dcrf

    _check(image, probs, crf_cfg)
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs.astype(np.float32), _MIN_PROB, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(crf_cfg["gaussian_sxy"]), compat=float(crf_cfg["gaussian_compat"]))
    crf.addPairwiseBilateral(sxy=float(crf_cfg["bilateral_sxy"]), srgb=float(crf_cfg["bilateral_srgb"]),
                             rgbim=np.ascontiguousarray(image), compat=float(crf_cfg["bilateral_compat"]))
    marginals = np.asarray(crf.inference(int(crf_cfg["iterations"])), dtype=np.float32)
    return marginals.reshape(num_classes, height, width)


def dense_crf(image: np.ndarray, probs: np.ndarray, crf_cfg: Mapping) -> np.ndarray:
    """Labels (H, W) int64 after the dense CRF (see `dense_crf_probs`)."""
    return dense_crf_probs(image, probs, crf_cfg).argmax(axis=0).astype(np.int64)
