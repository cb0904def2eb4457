"""LayerCascade variants, routing, execution paths, frozen BN, init, and the Model Cascade."""

import pytest
import timm
import torch
from helpers import randomise_bn

from lc.models.cascade import LayerCascade, init_from_irnet, undecided_mask
from lc.models.mc import ModelCascade

TINY = dict(width_mult=0.0625, block_counts=[1, 1, 1], output_stride=8, stem_padding="same",
            head_channels=8, head_kernel=3, freeze_bn=True)
TOL = dict(atol=1e-4, rtol=1e-4)


def _confidence(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=1).amax(dim=1)


def _scale_head_to_median(head, feats: torch.Tensor, target: float) -> None:
    """Scale a head's logits so that its median confidence on `feats` is `target` (bisection)."""
    with torch.no_grad():
        logits = head(feats)
        lo, hi = 0.0, 1e4
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(_confidence(logits * mid).median()) < target else (lo, mid)
        head.classifier.weight.mul_(lo)
        head.classifier.bias.mul_(lo)


@pytest.fixture(scope="module")
def routed():
    """A float64 lc model whose heads split the pixels at every stage, an image batch, and rho."""
    torch.manual_seed(0)
    model = LayerCascade(5, "lc", TINY).double().eval()
    randomise_bn(model, torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 64, 56, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rho = 0.6
    with torch.no_grad():
        f1 = model.backbone.forward_stage(1, images)
        f2 = model.backbone.forward_stage(2, f1)
        f3 = model.backbone.forward_stage(3, f2)
    for head, feats in ((model.head1, f1), (model.head2, f2), (model.head3, f3)):
        _scale_head_to_median(head, feats, rho)
    return model, images, rho


@pytest.mark.slow
def test_lc_compressed_equals_masked_dense_forward_and_backward(routed):
    model, images, rho = routed
    out_c = model(images, rho=rho, execution="compressed")
    out_r = model(images, rho=rho, execution="masked_dense")
    counts = [int(m.sum()) for m in out_c.stage_masks]
    assert counts[0] > counts[1] > counts[2] > 0  # a real three-way split
    for a, b in zip(out_c.stage_masks, out_r.stage_masks, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(out_c.decided_at_stage, out_r.decided_at_stage)
    assert set(out_c.decided_at_stage.unique().tolist()) == {1, 2, 3}
    for k in range(3):
        torch.testing.assert_close(out_c.stage_logits[k], out_r.stage_logits[k], **TOL)
        outside = ~out_c.stage_masks[k].unsqueeze(1).expand_as(out_c.stage_logits[k])
        assert not out_c.stage_logits[k][outside].any()
    torch.testing.assert_close(out_c.probs, out_r.probs, **TOL)

    params = [model.backbone.mixed_6a.branch1[1].conv.weight, model.backbone.block8.conv2d.weight,
              model.head2.conv.weight, model.head3.classifier.bias]

    def loss(out):
        return sum((lg * torch.linspace(-1, 1, lg.numel(), dtype=lg.dtype).view_as(lg.contiguous())).sum()
                   for lg in out.stage_logits)

    grads_c, grads_r = torch.autograd.grad(loss(out_c), params), torch.autograd.grad(loss(out_r), params)
    for a, b in zip(grads_c, grads_r, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    # auto = compressed for lc
    torch.testing.assert_close(model(images, rho=rho).probs, out_c.probs, **TOL)
    with pytest.raises(ValueError, match="every pixel active"):
        model(images, rho=rho, execution="dense")


def test_lc_at_rho_one_equals_dsn(routed):
    model, images, _ = routed
    dsn = LayerCascade(5, "dsn", TINY).double().eval()
    dsn.load_state_dict(model.state_dict())
    with torch.no_grad():
        out_lc, out_dsn = model(images, rho=1.0), dsn(images)
    assert all(bool(m.all()) for m in out_lc.stage_masks)
    assert bool((out_lc.decided_at_stage == 3).all())
    torch.testing.assert_close(out_lc.probs, out_dsn.probs, **TOL)
    torch.testing.assert_close(out_dsn.probs, out_dsn.stage_logits[2].softmax(1), **TOL)


def test_dsn_dropout_passes_lc_counts_of_random_pixels(routed):
    model, images, rho = routed
    dropout = LayerCascade(5, "dsn_dropout", TINY, rho=rho).double()
    dropout.load_state_dict(model.state_dict())
    dropout.train()
    torch.manual_seed(3)
    with torch.no_grad():
        out = dropout(images)
        lc_out = model(images, rho=rho)
    mask2, mask3 = out.stage_masks[1], out.stage_masks[2]
    assert torch.equal(mask2.flatten(1).sum(1), lc_out.stage_masks[1].flatten(1).sum(1))
    assert not torch.equal(mask2, lc_out.stage_masks[1])  # random pixels, not the hard ones
    expected3 = (undecided_mask(out.stage_logits[1], rho) & mask2).flatten(1).sum(1)
    assert torch.equal(mask3.flatten(1).sum(1), expected3)
    assert not (mask3 & ~mask2).any()
    dropout.eval()  # at evaluation dsn_dropout is dsn
    with torch.no_grad():
        assert all(bool(m.all()) for m in dropout(images).stage_masks)


@pytest.mark.slow
def test_decided_shares_move_monotonically_with_rho(routed):
    model, images, _ = routed
    shares = []
    with torch.no_grad():
        for rho in (1.0, 0.8, 0.65, 0.6, 0.55, 0.45, 0.3):
            out = model(images, rho=rho)
            shares.append([float((out.decided_at_stage <= k).double().mean()) for k in (1, 2)])
    stage1, upto2 = zip(*shares, strict=True)
    assert stage1[0] == 0.0 and stage1[-1] == 1.0
    assert all(a <= b for a, b in zip(stage1[:-1], stage1[1:], strict=True))
    assert all(a <= b for a, b in zip(upto2[:-1], upto2[1:], strict=True))


@pytest.mark.slow
def test_bn_stays_frozen_after_train():
    model = LayerCascade(3, "lc", TINY).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert model.backbone.conv2d_1a.conv.weight.requires_grad and model.head1.conv.weight.requires_grad
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)
    unfrozen = LayerCascade(3, "dsn", {**TINY, "freeze_bn": False}).train()
    assert all(m.training for m in unfrozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(RuntimeError, match="eval-mode"):
        LayerCascade(3, "lc", {**TINY, "freeze_bn": False}).train()(torch.randn(1, 3, 32, 32), rho=0.0)


def test_variants_heads_and_truncation():
    irnet = LayerCascade(4, "irnet", TINY)
    assert irnet.head(1) is None and irnet.head(2) is None and irnet.head(3) is not None
    out = irnet(torch.randn(1, 3, 40, 48), rho=0.0)  # one head: no routing whatever rho
    assert out.stage_logits[0] is None and out.stage_logits[2].shape == (1, 4, 5, 6)
    assert bool((out.decided_at_stage == 3).all())
    short = LayerCascade(4, "irnet", TINY, depth=2)
    assert not hasattr(short.backbone, "mixed_7a") and short.head(2) is not None
    out = short(torch.randn(1, 3, 40, 48))
    assert out.stage_logits[2] is None and not out.stage_masks[2].any()
    assert bool((out.decided_at_stage == 2).all())
    with pytest.raises(ValueError, match="variant must be"):
        LayerCascade(4, "lcx", TINY)
    with pytest.raises(ValueError, match="only the irnet variant"):
        LayerCascade(4, "lc", TINY, depth=2)


def test_init_from_irnet_loads_backbone_and_head3_only():
    source = LayerCascade(5, "irnet", TINY)
    target = LayerCascade(5, "lc", TINY)
    head1_before = target.head1.conv.weight.clone()
    init_from_irnet(target, source.state_dict())
    assert torch.equal(target.backbone.mixed_7a.branch0[0].conv.weight,
                       source.backbone.mixed_7a.branch0[0].conv.weight)
    assert torch.equal(target.head3.classifier.weight, source.head3.classifier.weight)
    assert torch.equal(target.head1.conv.weight, head1_before)
    with pytest.raises(ValueError, match="head1.conv.weight in the checkpoint"):
        init_from_irnet(target, LayerCascade(5, "dsn", TINY).state_dict())
    broken = dict(source.state_dict())
    broken.pop("backbone.conv2d_7b.conv.weight")
    with pytest.raises(ValueError, match="missing tensor backbone.conv2d_7b.conv.weight"):
        init_from_irnet(target, broken)
    with pytest.raises(ValueError, match="shape mismatch head3.classifier.weight"):
        init_from_irnet(target, LayerCascade(7, "irnet", TINY).state_dict())


@pytest.mark.slow
def test_full_size_parameter_count_matches_independent_count():
    """IRNet-LC at the paper's size (5/10/5 blocks, 128-channel heads, 21 classes)."""
    cfg = dict(width_mult=1.0, block_counts=[5, 10, 5], output_stride=8, stem_padding="same",
               head_channels=128, head_kernel=3, freeze_bn=True)
    ours = sum(p.numel() for p in LayerCascade(21, "lc", cfg).parameters())

    timm_net = timm.create_model("inception_resnet_v2", pretrained=False)
    count = sum(p.numel() for p in timm_net.parameters())
    count -= sum(p.numel() for p in timm_net.classif.parameters())
    # timm holds 10/20/10 blocks (its repeat_2 holds 9 plus block8); drop those beyond 5/10/5
    for blocks in (timm_net.repeat[5:], timm_net.repeat_1[10:], timm_net.repeat_2[4:]):
        count -= sum(p.numel() for p in blocks.parameters())
    for channels in (320, 1088, 1536):  # three heads: 3x3 conv to 128, 1x1 conv to 21
        count += channels * 128 * 9 + 128 + 128 * 21 + 21
    print(f"IRNet-LC parameters: {ours / 1e6:.2f}M (independent count {count / 1e6:.2f}M; paper 35.5M)")
    assert ours == count


@pytest.mark.slow
def test_model_cascade_chains_members_by_rho():
    torch.manual_seed(0)
    mc = ModelCascade(5, TINY, rho=0.6).double().eval()
    images = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    with torch.no_grad():
        for k, member in enumerate(mc.members):
            _scale_head_to_median(member.head(k + 1), _stage_features(member, images, k), 0.6)
        member_logits = [mc.members[k](images).stage_logits[k] for k in range(3)]
        out = mc(images)
    conf = [_confidence(lg) for lg in member_logits]
    decided1 = conf[0] >= 0.6
    decided2 = ~decided1 & (conf[1] >= 0.6)
    expected = torch.full_like(out.decided_at_stage, 3)
    expected[decided2] = 2
    expected[decided1] = 1
    assert torch.equal(out.decided_at_stage, expected)
    assert set(expected.unique().tolist()) == {1, 2, 3}
    for k in range(3):
        here = (expected == k + 1).unsqueeze(1).expand_as(out.probs)
        torch.testing.assert_close(out.probs[here], member_logits[k].softmax(1)[here])
    assert torch.equal(mc.passed_mask(images, 1), ~decided1)
    assert torch.equal(mc.passed_mask(images, 2), ~decided1 & ~decided2)
    assert torch.equal(mc.passed_mask(images, 2), out.stage_masks[2])
    assert bool(mc.passed_mask(images, 0).all()) and mc.passed_mask(images, 0).shape == expected.shape
    with torch.no_grad():
        everyone = mc(images, rho=1.0)
    assert bool((everyone.decided_at_stage == 3).all())


def _stage_features(member: LayerCascade, images: torch.Tensor, k: int) -> torch.Tensor:
    x = images
    for stage in range(1, k + 2):
        x = member.backbone.forward_stage(stage, x)
    return x


# --- the forward's hooks ------------------------------------------------------------------------
def test_router_hook_replaces_the_masks_and_sees_the_models_own_choice(routed):
    model, images, rho = routed
    with torch.no_grad():
        own = model(images, rho=rho)
        seen = []
        prescribed = {2: own.stage_masks[1].clone(), 3: torch.zeros_like(own.stage_masks[2])}
        prescribed[2][:, 0, 0] = ~prescribed[2][:, 0, 0]  # differ from the model's own choice

        def router(stage: int, proposed: torch.Tensor) -> torch.Tensor:
            seen.append((stage, proposed.clone()))
            return prescribed[stage]

        out = model(images, rho=rho, router=router)
    assert [stage for stage, _ in seen] == [2, 3]
    assert torch.equal(seen[0][1], own.stage_masks[1])  # stage 2: the model's rule on head 1
    assert torch.equal(out.stage_masks[1], prescribed[2]) and torch.equal(out.stage_masks[2], prescribed[3])
    assert not bool((out.decided_at_stage == 3).any())  # nothing reached stage 3
    with pytest.raises(ValueError, match="router returned"):
        model(images, rho=rho, router=lambda stage, proposed: proposed.float())


def test_on_stage_end_is_called_after_each_stage_in_order(routed):
    model, images, rho = routed
    ends = []
    with torch.no_grad():
        model(images, rho=rho, on_stage_end=ends.append)
    assert ends == [1, 2, 3]
    mc = ModelCascade(5, TINY, rho=0.6).double().eval()
    ends.clear()
    with torch.no_grad():
        out = mc(images, rho=0.0, on_stage_end=ends.append,
                 router=lambda stage, proposed: torch.ones_like(proposed))  # every pixel goes on
    assert ends == [1, 2, 3] and bool((out.decided_at_stage == 3).all())
