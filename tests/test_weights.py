"""ImageNet weights: timm's key layout, block selection, and `lc weights` (lc.data.weights)."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from lc.cli.main import main
from lc.data.paths import weights_path
from lc.data.weights import WEIGHTS_FILENAME, fetch_weights, load_weights_file, sha256_file
from lc.models.irnet import IRNet
from lc.models.timm_weights import load_timm_weights, timm_block_indices, timm_layout_state_dict

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    """timm's own inception_resnet_v2 (random weights; its layout is what matters)."""
    torch.manual_seed(0)
    return timm.create_model("inception_resnet_v2", pretrained=False).state_dict()


@pytest.mark.slow
def test_synthetic_checkpoint_has_timms_exact_layout(timm_state):
    ours = timm_layout_state_dict(1.0)
    assert list(ours) == list(timm_state)
    assert all(ours[k].shape == timm_state[k].shape and ours[k].dtype == timm_state[k].dtype for k in ours)
    again = timm_layout_state_dict(0.125)
    assert all(torch.equal(v, again[k]) for k, v in timm_layout_state_dict(0.125).items())  # deterministic


def test_block_indices():
    assert timm_block_indices(5, 10, "first") == [0, 1, 2, 3, 4]
    assert timm_block_indices(5, 10, "even") == [0, 2, 4, 6, 8]
    assert timm_block_indices(10, 20, "even") == list(range(0, 20, 2))
    assert timm_block_indices(4, 9, "even") == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="model.timm_blocks"):
        timm_block_indices(5, 10, "last")


@pytest.mark.slow
@pytest.mark.parametrize("blocks", ["first", "even"])
def test_5_10_5_blocks_load_from_timms_10_20_10(timm_state, blocks):
    """IRNet-LC's 5/10/5 blocks take timm's blocks chosen by model.timm_blocks, and everything else."""
    model = IRNet(width_mult=1.0, block_counts=(5, 10, 5), output_stride=8)
    report = load_timm_weights(model, timm_state, blocks=blocks)
    ours = model.state_dict()
    for group, counts in (("repeat", (5, 10)), ("repeat_1", (10, 20)), ("repeat_2", (4, 9))):
        for our_index, their_index in enumerate(timm_block_indices(*counts, blocks)):
            key = f"{group}.{our_index}.conv2d.weight"
            assert torch.equal(ours[key], timm_state[f"{group}.{their_index}.conv2d.weight"]), key
    for key in ("conv2d_1a.conv.weight", "mixed_6a.branch0.bn.running_var", "block8.conv2d.weight",
                "conv2d_7b.bn.running_mean"):
        assert torch.equal(ours[key], timm_state[key])
    assert "classif.weight" in report["skipped"] and len(report["loaded"]) == len(ours)


def test_wrong_width_is_refused_with_the_key():
    with pytest.raises(ValueError, match="model.width_mult"):
        load_timm_weights(IRNet(width_mult=0.0625, block_counts=(1, 1, 1)), timm_layout_state_dict(0.125))


def test_synthetic_mirror_weights_are_fetched_and_verified(prepared_test_cfg):
    path = weights_path(prepared_test_cfg)
    assert path.is_file()  # the conftest fetched them
    mirror_file = f"{prepared_test_cfg['data']['mirror']}/{WEIGHTS_FILENAME}"
    assert sha256_file(path) == sha256_file(mirror_file)
    state = load_weights_file(path)
    assert state["conv2d_1a.bn.running_var"].shape[0] == IRNet(prepared_test_cfg["model"]["width_mult"]) \
        .conv2d_1a.bn.num_features
    assert fetch_weights(prepared_test_cfg) == path  # verified already: kept


def test_damaged_source_is_refused_and_nothing_is_stored(prepared_test_cfg, tmp_path):
    cfg = copy.deepcopy(prepared_test_cfg)
    mirror = tmp_path / "mirror"
    shutil.copytree(cfg["data"]["mirror"], mirror)
    cfg["data"].update(root=str(tmp_path / "data"), mirror=str(mirror))
    data = bytearray((mirror / WEIGHTS_FILENAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (mirror / WEIGHTS_FILENAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match model.pretrained_sha256"):
        fetch_weights(cfg)
    assert not weights_path(cfg).exists()
    assert not list((tmp_path / "data").rglob("*.pth*"))


def test_pinned_digest_is_checked_and_a_missing_one_refused(prepared_test_cfg, tmp_path):
    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["model"]["pretrained_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="does not match"):
        fetch_weights(cfg)
    real = copy.deepcopy(cfg)  # the paper preset: no synthetic mirror, no pinned digest
    real["data"].update(synthetic=False, mirror=None)
    real["model"]["pretrained_sha256"] = None
    with pytest.raises(ValueError, match=r"model.pretrained_sha256 is null.*sha256sum"):
        fetch_weights(real)


def test_lc_weights_command(prepared_test_cfg, tmp_path, capsys):
    import yaml

    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["data"]["root"] = str(tmp_path / "data")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(dict(cfg, presets={"test": {}})))
    assert main(["weights", "--config", str(config_file), "--preset", "test"]) == 0
    assert capsys.readouterr().out.strip() == str(weights_path(cfg))
    assert sha256_file(weights_path(cfg)) == sha256_file(f"{cfg['data']['mirror']}/{WEIGHTS_FILENAME}")
