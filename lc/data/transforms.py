"""Image normalisation for IRNet, the training augmentation, and deterministic loader workers."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lc.data.labels import IGNORE_INDEX

# timm's inception_resnet_v2 pretrained config (Inception preprocessing): x / 255 * 2 - 1.
IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) normalised with IMAGE_MEAN / IMAGE_STD."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return image.sub_(mean).div_(std)


def denormalize(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A normalised (3, H, W) image back to uint8 (H, W, 3) for display."""
    image = torch.as_tensor(image).detach().float().cpu()
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"denormalize expects one (3, H, W) image, got shape {tuple(image.shape)}")
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    rgb = (image * std + mean).clamp_(0.0, 1.0).mul_(255.0).round_()
    return rgb.to(torch.uint8).permute(1, 2, 0).numpy()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


class TrainTransform:
    """Random scale, pad, random crop and horizontal flip of a normalised image and its label.

    The image is padded with 0, which after normalisation is the mean colour; the label with the
    ignore value, so padding never contributes to the loss. Randomness comes from torch's generator,
    which the DataLoader seeds per worker (see `worker_init_fn`).
    """

    def __init__(self, crop_size: int | Sequence[int], scale_range: Sequence[float] = (0.5, 2.0),
                 flip: bool = True, ignore_index: int = IGNORE_INDEX):
        self.crop_h, self.crop_w = _pair(crop_size)
        self.scale_min, self.scale_max = float(scale_range[0]), float(scale_range[1])
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"train.scale_range must be 0 < min <= max, got {list(scale_range)}")
        self.flip = flip
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale_min + (self.scale_max - self.scale_min) * torch.rand(()).item()
        height, width = label.shape
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size != (height, width):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        pad_h, pad_w = max(self.crop_h - size[0], 0), max(self.crop_w - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(0, label.shape[0] - self.crop_h + 1, ()).item())
        left = int(torch.randint(0, label.shape[1] - self.crop_w + 1, ()).item())
        image = image[:, top:top + self.crop_h, left:left + self.crop_w]
        label = label[top:top + self.crop_h, left:left + self.crop_w]
        if self.flip and torch.rand(()).item() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seeded_generator(seed: int) -> torch.Generator:
    """A torch.Generator for DataLoader(generator=...): same seed, same shuffling and augmentation."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator
