"""lc.training.checkpoint: atomic save, checked load, rebuilding every kind of trained model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lc.models.cascade import LayerCascade
from lc.models.mc import ModelCascade
from lc.training.checkpoint import (
    CheckpointError,
    build_model_from_spec,
    capture_rng_state,
    load_checkpoint,
    load_model,
    make_model_spec,
    restore_rng_state,
    save_checkpoint,
)

TINY = {"width_mult": 0.0625, "block_counts": [1, 1, 1], "output_stride": 8, "stem_padding": "same",
        "head_channels": 8, "head_kernel": 3, "freeze_bn": True, "pretrained": None}


def _payload(spec: dict, model: torch.nn.Module) -> dict:
    return {"model": model.state_dict(), "model_spec": spec, "iteration": 3, "config": {"seed": 0},
            "rng": [capture_rng_state()], "optimizer": None}


def test_save_is_atomic_and_roundtrips(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(4.0)}, "model_spec": {}, "iteration": 1})
    save_checkpoint(path, {"model": {"w": torch.arange(5.0)}, "model_spec": {}, "iteration": 2})
    payload = load_checkpoint(path)
    assert payload["iteration"] == 2 and torch.equal(payload["model"]["w"], torch.arange(5.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "model_spec": {}, "iteration": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint(path, {"model": {}, "model_spec": {}, "iteration": lambda: 0})
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_file_says_delete_and_rerun(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(256)}, "model_spec": {}, "iteration": 1})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 8,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is truncated or corrupted.*delete it"):
        load_checkpoint(path)


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}})
    with pytest.raises(CheckpointError, match=r"lacks \['model_spec', 'iteration'\].*delete it"):
        load_checkpoint(path)


def test_not_a_dict(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)


@pytest.mark.parametrize(("kind", "variant"), [("cascade", "irnet"), ("cascade", "dsn"),
                                               ("cascade", "dsn_dropout"), ("cascade", "lc"), ("mc", "mc")])
@pytest.mark.slow
def test_load_model_rebuilds_every_variant(tmp_path, kind, variant):
    torch.manual_seed(0)
    spec = make_model_spec(kind, variant, 21, TINY, rho=0.9, dataset="voc")
    model = build_model_from_spec(spec)
    assert isinstance(model, ModelCascade if kind == "mc" else LayerCascade)
    with torch.no_grad():  # make sure the loaded weights are the saved ones, not a fresh init
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    save_checkpoint(tmp_path / "checkpoint.pt", _payload(spec, model))
    loaded = load_model(tmp_path / "checkpoint.pt")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.rho == pytest.approx(0.9)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    images = torch.randn(1, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images).probs, loaded(images).probs)


def test_load_model_rejects_weights_that_do_not_fit_the_spec(tmp_path):
    spec = make_model_spec("cascade", "lc", 21, TINY, rho=0.9)
    other = LayerCascade(19, "lc", TINY)
    save_checkpoint(tmp_path / "checkpoint.pt", _payload(spec, other))
    with pytest.raises(CheckpointError, match="do not fit its model_spec"):
        load_model(tmp_path / "checkpoint.pt")


def test_spec_validation():
    with pytest.raises(CheckpointError, match="kind must be one of"):
        make_model_spec("segnet", "lc", 21, TINY, rho=0.9)
    with pytest.raises(CheckpointError, match="lacks"):
        build_model_from_spec({"kind": "cascade"})


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    save_checkpoint(tmp_path / "rng.pt", {"rng": [state], "model": {}, "model_spec": {}, "iteration": 0})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
