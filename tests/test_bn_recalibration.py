"""BatchNorm recalibration of the truncated ImageNet start (lc.training.bn_recalibration)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lc.models.irnet import IRNet, freeze_batchnorm
from lc.models.timm_weights import TIMM_BLOCK_COUNTS, load_timm_weights
from lc.training.bn_recalibration import recalibrate_bn, run_bn_recalibration
from lc.training.checkpoint import load_checkpoint

WIDTH = 0.0625
_BN = torch.nn.modules.batchnorm._BatchNorm


def _images(seed: int, batches: int, size: int = 48, batch: int = 4) -> list[torch.Tensor]:
    """Smooth random images (structure at several scales), a fixed list of batches."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        coarse = torch.randn(batch, 3, size // 8, size // 8, generator=g)
        fine = 0.3 * torch.randn(batch, 3, size, size, generator=g)
        out.append(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) + fine)
    return out


def test_running_stats_equal_input_statistics_over_all_images():
    torch.manual_seed(0)
    net = IRNet(width_mult=WIDTH, block_counts=(1, 2, 1), output_stride=8)
    freeze_batchnorm(net)
    layers = [m for m in net.modules() if isinstance(m, _BN)]
    seen: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in layers}
    handles = [m.register_forward_pre_hook(lambda mod, inp: seen[mod].append(inp[0].detach().double()))
               for m in layers]
    batches = _images(1, 3)
    try:
        images = recalibrate_bn(net, batches)
    finally:
        for handle in handles:
            handle.remove()
    assert images == 12
    for m in layers:
        x = torch.cat([t.transpose(0, 1).flatten(1) for t in seen[m]], dim=1)  # (C, all pixels of all images)
        assert x.shape[1] > 0
        torch.testing.assert_close(m.running_mean.double(), x.mean(dim=1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), x.var(dim=1, unbiased=True), rtol=1e-4, atol=1e-6)
        assert not m.training, "BN is frozen (eval mode) again after the recalibration"
        assert m.momentum == 0.1, "the momentum is restored"
    assert not any(p.requires_grad for m in layers for p in m.parameters())


def test_recalibration_refolds_the_stage_plans():
    """The planned region stages fold BN statistics: after a recalibration they use the new ones."""
    from lc.models.region_irnet import run_stage_compressed
    from lc.ops.active_set import ActiveSet

    torch.manual_seed(0)
    net = IRNet(width_mult=WIDTH, block_counts=(1, 2, 1), output_stride=8)
    freeze_batchnorm(net)
    x = torch.randn(1, net.stage_channels[0], 6, 6).relu()
    active = ActiveSet(torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(2)) < 0.5)
    with torch.no_grad():
        before = run_stage_compressed(net, 2, x, active)  # builds and caches the stage-2 plan
    recalibrate_bn(net, _images(1, 2))
    with torch.no_grad():
        planned = run_stage_compressed(net, 2, x, active)
        per_layer = run_stage_compressed(net, 2, x, active, planned=False)
    assert not torch.allclose(before, planned)
    torch.testing.assert_close(planned, per_layer, rtol=1e-4, atol=1e-5)


def _stage_stats(net: IRNet, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per stage: per-channel mean and std of its output over the batches (eval mode)."""
    net.eval()
    with torch.no_grad():
        feats = [net.forward_stages(b) for b in batches]
    stats = []
    for stage in range(3):
        x = torch.cat([f[stage].transpose(0, 1).flatten(1) for f in feats], dim=1)
        stats.append((x.mean(dim=1), x.std(dim=1)))
    return stats


def _distance(a, b) -> float:
    (ma, sa), (mb, sb) = a, b
    return float((ma - mb).abs().mean() + (sa - sb).abs().mean())


def test_truncated_network_moves_closer_to_the_full_network():
    torch.manual_seed(0)
    full = IRNet(width_mult=WIDTH, block_counts=TIMM_BLOCK_COUNTS, output_stride=8)
    calib, held_out = _images(2, 4), _images(3, 2)
    recalibrate_bn(full, calib)  # the stand-in for ImageNet-trained statistics of the 10/20/10 network
    truncated = IRNet(width_mult=WIDTH, block_counts=(5, 10, 5), output_stride=8)
    load_timm_weights(truncated, full.state_dict())
    reference = _stage_stats(full, held_out)
    before = _stage_stats(truncated, held_out)
    recalibrate_bn(truncated, calib)
    after = _stage_stats(truncated, held_out)
    # measured at seed 0: stage 2 0.17 -> 0.13, stage 3 0.25 -> 0.12
    for stage in (1, 2):  # stages 2 and 3 start with Mixed-6a / Mixed-7a, which read a shallower input
        d_before = _distance(before[stage], reference[stage])
        d_after = _distance(after[stage], reference[stage])
        assert d_after < 0.9 * d_before, (stage + 1, d_before, d_after)


@pytest.mark.slow
def test_recalibrated_start_is_the_pretraining_init_and_is_recorded(prepared_test_cfg, tmp_path):
    from lc.training.loop import train

    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["train"]["bn_recalibration_images"] = 5
    cfg["train"]["pretrain_bn"] = "frozen"
    start = tmp_path / "start.pt"
    record = run_bn_recalibration(cfg, "voc", start)
    assert record["images"] == 5 and record["layers"] > 0
    payload = load_checkpoint(start)
    assert payload["bn_recalibration"] == record
    result = train(cfg, "voc", "irnet", tmp_path / "irnet", init=start, device="cpu", stop_after=1)
    assert load_checkpoint(tmp_path / "irnet" / "resume.pt")["bn_recalibration"] == record
    # frozen BN: the pretraining keeps the recalibrated statistics
    ours = result.model.state_dict()
    for key, value in payload["model"].items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(ours[key].cpu(), value)
