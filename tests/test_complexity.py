"""Parameter and FLOP counting per stage, and the FLOP-predicted cascade cost."""

from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn

from lc.models.cascade import LayerCascade
from lc.models.complexity import count_flops, count_parameters, lc_cost_vs_irnet, predicted_cost, stage_costs
from lc.models.irnet import IRNet


def _head(in_channels: int, head_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(head_channels, num_classes, 1))


def _heads(backbone: IRNet, head_channels: int, num_classes: int) -> list[nn.Module]:
    return [_head(c, head_channels, num_classes) for c in backbone.stage_channels]


@pytest.mark.parametrize(
    "in_ch, out_ch, kernel, stride, padding, dilation, groups, size",
    [(3, 8, 3, 1, 1, 1, 1, (17, 23)), (16, 12, (1, 7), 1, (0, 6), 2, 1, (9, 11)),
     (8, 8, 3, 2, 0, 1, 4, (15, 15)), (5, 7, 1, 1, 0, 1, 1, (4, 6))],
)
def test_conv_flops_equal_the_analytic_formula(in_ch, out_ch, kernel, stride, padding, dilation, groups,
                                                size):
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation,
                     groups=groups)
    x = torch.randn(2, in_ch, *size)
    flops, out = count_flops(conv, x)
    kh, kw = conv.kernel_size
    # one multiply-add per (output element, input channel of its group, kernel tap) = 2 FLOPs
    expected = 2 * out.numel() * (in_ch // groups) * kh * kw
    assert flops == expected
    assert count_parameters(conv) == out_ch * (in_ch // groups) * kh * kw + out_ch


def test_count_parameters_counts_shared_tensors_once_and_trainable_only():
    shared = nn.Linear(4, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 2))
    assert count_parameters(model) == (4 * 3 + 3) + (3 * 2 + 2)
    model[3].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == (4 * 3 + 3) + 2
    assert count_parameters(None) == 0


@pytest.mark.slow
def test_stage_costs_sum_to_the_whole_network():
    torch.manual_seed(0)
    backbone = IRNet(width_mult=0.125, block_counts=(2, 1, 2))
    heads = nn.ModuleList(_heads(backbone, head_channels=16, num_classes=5))
    rows = stage_costs(backbone, (64, 48), heads=heads)
    assert [r["stage"] for r in rows] == [1, 2, 3]
    assert [r["output_shape"] for r in rows] == [(1, c, 8, 6) for c in backbone.stage_channels]

    def whole(x):
        return [head(feat) for head, feat in zip(heads, backbone.forward_stages(x), strict=True)]

    total_flops, logits = count_flops(whole, torch.zeros(1, 3, 64, 48))
    assert sum(r["flops"] for r in rows) == total_flops
    assert sum(r["params"] for r in rows) == count_parameters(backbone) + count_parameters(heads)
    # every head: 3x3 conv at 8x6 then 1x1 conv, counted analytically
    for r, c in zip(rows, backbone.stage_channels, strict=True):
        assert r["head_flops"] == 2 * 8 * 6 * (c * 16 * 9 + 16 * 5)
        assert r["head_params"] == (c * 16 * 9 + 16) + (16 * 5 + 5)
    assert all(r["backbone_flops"] > 0 for r in rows)
    # deeper stages cost more here (stage 3 runs at 8x6 with the widest channels)
    assert rows[2]["backbone_flops"] > rows[1]["backbone_flops"]


def test_stage_costs_leave_the_model_untouched_and_count_missing_heads_as_zero():
    backbone = IRNet(width_mult=0.125, block_counts=(1, 1, 1))
    backbone.train()
    before = backbone.conv2d_1a.bn.running_mean.clone()
    rows = stage_costs(backbone, 32)
    assert backbone.training
    torch.testing.assert_close(backbone.conv2d_1a.bn.running_mean, before)
    assert all(r["head_params"] == 0 and r["head_flops"] == 0 for r in rows)
    with pytest.raises(TypeError, match="IRNet or a LayerCascade"):
        stage_costs(nn.Conv2d(3, 3, 1), 32)


def test_meta_device_counts_equal_cpu_counts():
    torch.manual_seed(0)
    cpu_rows = stage_costs(IRNet(width_mult=0.125, block_counts=(1, 2, 1)), 48)
    with torch.device("meta"):
        meta_model = IRNet(width_mult=0.125, block_counts=(1, 2, 1))
    meta_rows = stage_costs(meta_model, 48)
    for cpu, meta in zip(cpu_rows, meta_rows, strict=True):
        assert cpu["flops"] == meta["flops"] and cpu["params"] == meta["params"]


@pytest.mark.slow
@pytest.mark.parametrize("block_counts", [(5, 10, 5), (10, 20, 10)])
def test_full_size_irnet_lc_parameters_equal_timm_minus_removed_blocks(block_counts):
    num_classes, head_channels = 21, 128
    model_cfg = {"width_mult": 1.0, "block_counts": list(block_counts), "output_stride": 8,
                 "stem_padding": "same", "head_channels": head_channels, "head_kernel": 3}
    with torch.device("meta"):
        model = LayerCascade(num_classes, "lc", model_cfg)
        reference = timm.create_model("inception_resnet_v2", pretrained=False)
    rows = stage_costs(model, 512)
    assert sum(r["params"] for r in rows) == count_parameters(model)

    # timm's 10/20/10 network minus its classifier and the blocks beyond our counts
    kept = {"repeat": block_counts[0], "repeat_1": block_counts[1], "repeat_2": block_counts[2] - 1}
    expected_backbone = 0
    for name, tensor in reference.named_parameters():
        group, _, rest = name.partition(".")
        if group == "classif" or (group in kept and int(rest.split(".")[0]) >= kept[group]):
            continue
        expected_backbone += tensor.numel()
    expected_heads = sum(c * head_channels * 9 + head_channels + head_channels * num_classes + num_classes
                         for c in (320, 1088, 1536))
    assert sum(r["backbone_params"] for r in rows) == expected_backbone
    assert sum(r["head_params"] for r in rows) == expected_heads
    assert rows[2]["output_shape"] == (1, 1536, 64, 64)


def test_predicted_cost():
    cost = predicted_cost([10.0, 20.0, 30.0], [1.0, 0.5, 0.2])
    assert cost["flops"] == pytest.approx(10 + 10 + 6)
    assert cost["dense_flops"] == pytest.approx(60)
    assert cost["speedup"] == pytest.approx(60 / 26)
    assert cost["saving"] == pytest.approx(1 - 26 / 60)
    assert predicted_cost([3, 4, 5], [1, 1, 1])["speedup"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="stage 1"):
        predicted_cost([1, 1, 1], [0.9, 0.5, 0.1])
    with pytest.raises(ValueError, match="must not increase"):
        predicted_cost([1, 1, 1], [1.0, 0.2, 0.5])
    with pytest.raises(ValueError, match="3 stage FLOP counts but 2"):
        predicted_cost([1, 1, 1], [1.0, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predicted_cost([1, 1, 1], [1.0, 1.5, 0.2])


@pytest.mark.slow
def test_model_info_command_writes_the_table(tmp_path, capsys):
    from lc.cli.main import main

    out = tmp_path / "info" / "model_info.csv"
    config = Path(__file__).resolve().parents[1] / "config.yaml"
    assert main(["model-info", "--config", str(config), "--preset", "test", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert not (tmp_path / "info" / "model_info.csv.tmp").exists()
    full = table[(table["network"] == "IRNet-LC") & (table["block_counts"] == "5/10/5")]
    assert list(full["stage"]) == ["1", "2", "3", "total"]
    total = full[full["stage"] == "total"].iloc[0]
    assert total["params"] == full[full["stage"] != "total"]["params"].sum()
    assert total["gflops"] == pytest.approx(full[full["stage"] != "total"]["gflops"].sum())
    assert total["paper_params_m"] == pytest.approx(35.5)
    assert set(table["network"]) == {"IRNet-LC (configured)", "IRNet-LC", "DeepLab-v2", "SegNet"}
    printed = capsys.readouterr().out
    assert "against dense IRNet's" in printed
    # the printed speedup is over dense IRNet (one head), as in Table 3, not over dense DSN
    irnet_total = sum(r["flops"] for r in stage_costs(_meta_cascade("irnet", [5, 10, 5]), 512)) / 1e9
    assert f"against dense IRNet's {irnet_total:.1f}" in printed


def _meta_cascade(variant: str, block_counts: list[int]) -> LayerCascade:
    from lc.config import load_config

    paper = load_config(Path(__file__).resolve().parents[1] / "config.yaml", preset="paper")
    cfg = {**paper["model"], "width_mult": 1.0, "block_counts": block_counts}
    with torch.device("meta"):
        return LayerCascade(21, variant, cfg)


@pytest.mark.slow
def test_lc_cost_is_compared_with_dense_irnet_one_head():
    cfg = {"width_mult": 0.125, "block_counts": [1, 1, 1], "head_channels": 16}
    irnet = LayerCascade(5, "irnet", cfg)
    lc = LayerCascade(5, "lc", cfg)
    irnet_flops = sum(r["flops"] for r in stage_costs(irnet, 64))
    lc_rows = stage_costs(lc, 64)
    everyone = lc_cost_vs_irnet(cfg, 5, 64, [1.0, 1.0, 1.0])
    assert everyone["irnet_flops"] == irnet_flops
    # every pixel through every stage costs the two extra heads: slower than IRNet, not x1.00
    assert everyone["flops"] == sum(r["flops"] for r in lc_rows) > irnet_flops
    assert everyone["speedup"] == pytest.approx(irnet_flops / everyone["flops"]) and everyone["speedup"] < 1
    routed = lc_cost_vs_irnet(cfg, 5, 64, [1.0, 0.5, 0.2])
    expected = lc_rows[0]["flops"] + 0.5 * lc_rows[1]["flops"] + 0.2 * lc_rows[2]["flops"]
    assert routed["flops"] == pytest.approx(expected)
    assert routed["speedup"] == pytest.approx(irnet_flops / expected)


def test_truncated_cascade_counts_only_its_stages():
    model_cfg = {"width_mult": 0.125, "block_counts": [1, 1, 1], "head_channels": 8}
    member = LayerCascade(5, "irnet", model_cfg, depth=2)
    rows = stage_costs(member, 32)
    assert [r["stage"] for r in rows] == [1, 2]
    assert rows[0]["head_params"] == 0 and rows[1]["head_params"] > 0
    assert sum(r["params"] for r in rows) == count_parameters(member)
