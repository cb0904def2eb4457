"""lc.training.loop, losses and distributed sampling on the test preset's synthetic VOC."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from lc.cli.main import main
from lc.training.checkpoint import CheckpointError, load_checkpoint, load_model
from lc.training.distributed import EpochSampler, SeededSamples
from lc.training.loop import LOG_COLUMNS, poly_lr_factor, total_iterations, train
from lc.training.losses import cascade_loss, downsample_labels, masked_cross_entropy


def _below_median_confidence(logits: torch.Tensor, rho: float) -> torch.Tensor:
    """Routing stand-in: the less confident half of each image's pixels goes on."""
    with torch.no_grad():
        confidence = logits.softmax(dim=1).amax(dim=1)
        return confidence < confidence.flatten(1).median(dim=1).values.view(-1, 1, 1)


@pytest.fixture
def half_routing(monkeypatch):
    """At the test preset's scale confidences move too fast for any fixed rho to route a stable part
    of the pixels, so the rho rule is replaced: routing then stays partial in every iteration."""
    monkeypatch.setattr("lc.models.cascade.undecided_mask", _below_median_confidence)
    monkeypatch.setattr("lc.models.mc.undecided_mask", _below_median_confidence)


def _read_log(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == LOG_COLUMNS
        return list(reader)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6, rtol=0), key


@pytest.fixture(scope="module")
def cfg(prepared_test_cfg):
    return copy.deepcopy(prepared_test_cfg)


@pytest.fixture(scope="module")
def irnet_run(cfg, tmp_path_factory):
    """The irnet pretraining through `lc train`, as Snakemake calls it."""
    tmp = tmp_path_factory.mktemp("irnet")
    config_file = tmp / "config.resolved.yaml"
    config_file.write_text(yaml.safe_dump(dict(cfg, presets={"test": {}})))
    out = tmp / "runs" / "voc" / "irnet"
    rc = main(["train", "--config", str(config_file), "--preset", "test", "--dataset", "voc",
               "--variant", "irnet", "--out", str(out)])
    assert rc == 0
    return out


# --- losses ----------------------------------------------------------------------------------
def test_downsample_labels_takes_the_aligned_pixel():
    labels = torch.arange(16 * 16).view(1, 16, 16) % 256
    small = downsample_labels(labels, (2, 2))
    assert small.tolist() == [[[labels[0, 0, 0].item(), labels[0, 0, 8].item()],
                               [labels[0, 8, 0].item(), labels[0, 8, 8].item()]]]
    assert small.dtype == labels.dtype


def test_masked_cross_entropy_covers_only_routed_labelled_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4)
    labels = torch.randint(0, 5, (2, 4, 4))
    labels[0, 0, 0] = 255
    mask = torch.rand(2, 4, 4) > 0.5
    mask[0, 0, 0] = True
    loss, count = masked_cross_entropy(logits, labels, mask)
    keep = mask & (labels != 255)
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert int(count) == int(keep.sum())
    assert torch.allclose(loss, expected)


def test_stage_without_routed_pixels_contributes_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    out = cascade_loss([logits, logits * 2, logits * 3], [full, empty, empty], labels, [1.0, 1.0, 1.0])
    assert float(out.stage_loss[1]) == 0.0 and float(out.stage_loss[2]) == 0.0
    assert torch.isfinite(out.total) and torch.allclose(out.total, out.stage_loss[0])
    out.total.backward()
    assert torch.isfinite(logits.grad).all()
    assert [float(f) for f in out.stage_fraction] == [1.0, 0.0, 0.0]


def test_cascade_loss_weights_and_single_loss():
    torch.manual_seed(0)
    logits = [torch.randn(1, 4, 3, 3) for _ in range(3)]
    labels = torch.randint(0, 4, (1, 24, 24))
    masks = [torch.ones(1, 3, 3, dtype=torch.bool)] * 3
    single = cascade_loss([None, None, logits[2]], masks, labels, [1.0, 1.0, 1.0])
    assert single.stage_loss[:2] == [None, None]
    assert torch.allclose(single.total, F.cross_entropy(logits[2], downsample_labels(labels, (3, 3))))
    weighted = cascade_loss(logits, masks, labels, [0.5, 2.0, 1.0])
    parts = weighted.stage_loss
    assert torch.allclose(weighted.total, 0.5 * parts[0] + 2.0 * parts[1] + parts[2])


def test_poly_lr():
    assert poly_lr_factor(0, 100, 0.9) == 1.0
    assert poly_lr_factor(50, 100, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(100, 100, 0.9) == 0.0


# --- sampling --------------------------------------------------------------------------------
def test_epoch_sampler_shards_and_resumes():
    full = list(EpochSampler(10, 2, seed=3))
    assert len(full) == 10 and {i for i, _ in full} == set(range(10))
    sampler = EpochSampler(10, 2, seed=3)
    sampler.set_epoch(0, skip_batches=2)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in full]
    ranks = [list(EpochSampler(10, 2, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert all(len(r) == 4 for r in ranks)  # 10 samples: two whole global batches of 4
    assert not {i for i, _ in ranks[0]} & {i for i, _ in ranks[1]}
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(3, 2, seed=0, num_replicas=2)


def test_augmentation_depends_only_on_seed_epoch_and_index(cfg):
    from lc.data import build_dataset

    samples = SeededSamples(build_dataset(cfg, "voc", "train", train=True), seed=0)
    first = samples[(3, 1)]
    torch.rand(100)  # the global stream must not matter
    samples[(5, 1)]
    again = samples[(3, 1)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(samples[(3, 2)]["image"], first["image"])


# --- training runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_irnet_pretraining_writes_checkpoint_log_and_marker(cfg, irnet_run):
    total = total_iterations(cfg, "irnet")
    rows = _read_log(irnet_run / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(2, total + 1, 2))
    assert all(r["loss_stage1"] == "" and float(r["loss"]) == float(r["loss_stage3"]) for r in rows)
    assert float(rows[0]["lr"]) > float(rows[-1]["lr"]) > 0
    done = json.loads((irnet_run / "train_done.json").read_text())
    assert done["iterations"] == total and done["variant"] == "irnet" and done["device"] == "cpu"
    assert done["final_loss"] == pytest.approx(float(rows[-1]["loss"]))
    payload = load_checkpoint(irnet_run / "checkpoint.pt")
    assert payload["iteration"] == total and payload["model_spec"]["variant"] == "irnet"
    assert payload["model_spec"]["model_cfg"]["freeze_bn"] is (cfg["train"]["pretrain_bn"] == "frozen")
    model = load_model(irnet_run / "checkpoint.pt")
    out = model(torch.randn(1, 3, 48, 48))
    assert out.stage_logits[2].shape == (1, 21, 6, 6)


def test_cascade_starts_from_the_pretrained_irnet(cfg, irnet_run, tmp_path):
    irnet = load_checkpoint(irnet_run / "checkpoint.pt")["model"]
    result = train(cfg, "voc", "lc", tmp_path, init=irnet_run / "checkpoint.pt", stop_after=0)
    assert result.iterations == 0
    ours = result.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in irnet.items())
    assert any(k.startswith("head1.") for k in ours) and not any(k.startswith("head1.") for k in irnet)


def test_mc_members_start_from_the_pretrained_irnet_stages(cfg, irnet_run, tmp_path):
    irnet = load_checkpoint(irnet_run / "checkpoint.pt")["model"]
    result = train(cfg, "voc", "mc", tmp_path, init=irnet_run / "checkpoint.pt", stop_after=0)
    for member in result.model.members:
        for key, value in member.state_dict().items():
            if key.startswith("backbone.") or key in irnet:
                assert torch.equal(value, irnet[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "stop"), [("lc", 2), ("dsn_dropout", 2), ("mc", 4)])
def test_killed_and_resumed_run_ends_with_the_same_weights(cfg, irnet_run, tmp_path, half_routing, variant,
                                                           stop):
    run_cfg = copy.deepcopy(cfg)
    init = irnet_run / "checkpoint.pt"
    straight = train(run_cfg, "voc", variant, tmp_path / "straight", init=init)
    first = train(run_cfg, "voc", variant, tmp_path / "resumed", init=init, stop_after=stop)
    assert first.iterations == stop and not (tmp_path / "resumed" / "train_done.json").exists()
    # a row logged after the last checkpoint (the process died in between) must not survive
    with open(tmp_path / "resumed" / "train_log.csv", "a") as handle:
        handle.write(f"{stop + 1},0.1,9.9,,,,,,,1.0\n")
    resumed = train(run_cfg, "voc", variant, tmp_path / "resumed", init=init)  # new call, from disk
    assert resumed.iterations == straight.iterations == total_iterations(cfg, variant)
    _assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())
    _assert_same_weights(load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"],
                         load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"])
    log_a = _read_log(tmp_path / "straight" / "train_log.csv")
    log_b = _read_log(tmp_path / "resumed" / "train_log.csv")
    assert [r["iteration"] for r in log_a] == [r["iteration"] for r in log_b]
    for row_a, row_b in zip(log_a, log_b, strict=True):
        for column in LOG_COLUMNS[1:-1]:
            assert (row_a[column] == "") == (row_b[column] == "")
            if row_a[column]:
                assert float(row_a[column]) == pytest.approx(float(row_b[column]), abs=1e-6), column
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in log_b)
    routed = [float(r["pixels_stage2"] or r["pixels_stage3"]) for r in log_b if r["pixels_stage2"] or
              r["pixels_stage3"]]
    assert routed and all(0.0 < f < 1.0 for f in routed)  # routing was partial throughout


def test_completed_run_is_not_retrained(cfg, irnet_run):
    before = (irnet_run / "checkpoint.pt").stat().st_mtime_ns, (irnet_run / "train_done.json").read_text()
    result = train(cfg, "voc", "irnet", irnet_run)
    assert result.iterations == total_iterations(cfg, "irnet")
    assert before == ((irnet_run / "checkpoint.pt").stat().st_mtime_ns,
                      (irnet_run / "train_done.json").read_text())


@pytest.mark.slow
def test_resume_refuses_other_settings_and_no_resume_restarts(cfg, tmp_path):
    train(cfg, "voc", "dsn", tmp_path, stop_after=2)
    other = copy.deepcopy(cfg)
    other["train"]["lr"] = cfg["train"]["lr"] * 2
    with pytest.raises(CheckpointError, match=r"train.lr.*--no-resume"):
        train(other, "voc", "dsn", tmp_path)
    with pytest.raises(CheckpointError, match=r"model_spec.variant: 'dsn' -> 'lc'"):
        train(cfg, "voc", "lc", tmp_path)
    result = train(other, "voc", "dsn", tmp_path, resume=False, stop_after=2)
    assert result.iterations == 2
    assert [r["iteration"] for r in _read_log(tmp_path / "train_log.csv")] == ["2"]
    assert not (tmp_path / "checkpoint.pt").exists()  # a partial run keeps its state in resume.pt only
    assert load_checkpoint(tmp_path / "resume.pt")["config"]["train"]["lr"] == other["train"]["lr"]


def test_bad_initialisation_is_refused(cfg, irnet_run, tmp_path):
    train(cfg, "voc", "mc", tmp_path / "mc", stop_after=1)
    with pytest.raises(CheckpointError, match="start from a three-stage cascade checkpoint"):
        train(cfg, "voc", "lc", tmp_path / "lc", init=tmp_path / "mc" / "resume.pt")
    with pytest.raises(ValueError, match="not from --init"):
        train(cfg, "voc", "irnet", tmp_path / "irnet", init=irnet_run / "checkpoint.pt")
    missing = copy.deepcopy(cfg)
    missing["model"]["pretrained"] = str(tmp_path / "imagenet.pth")
    with pytest.raises(FileNotFoundError, match="imagenet.pth does not exist"):
        train(missing, "voc", "irnet", tmp_path / "irnet")
    with pytest.raises(ValueError, match="variant must be one of"):
        train(cfg, "voc", "segnet", tmp_path / "segnet")


@pytest.mark.slow
def test_cityscapes_trains_with_its_19_classes(cfg, tmp_path):
    result = train(cfg, "cityscapes", "lc", tmp_path, stop_after=2)
    assert result.iterations == 2
    assert load_checkpoint(tmp_path / "resume.pt")["model_spec"]["num_classes"] == 19
    assert result.model.head(1).classifier.out_channels == 19


# --- what a run starts from, and when it resumes ---------------------------------------------
@pytest.mark.slow
def test_lc_starts_from_a_dsn_checkpoint_with_its_heads(cfg, irnet_run, tmp_path):
    """train.cascade_init: dsn: every tensor of the DSN checkpoint, stage heads 1-3 included."""
    train(cfg, "voc", "dsn", tmp_path / "dsn", init=irnet_run / "checkpoint.pt")
    dsn = load_checkpoint(tmp_path / "dsn" / "checkpoint.pt")
    result = train(cfg, "voc", "lc", tmp_path / "lc", init=tmp_path / "dsn" / "checkpoint.pt", stop_after=0)
    ours = result.model.state_dict()
    assert ours.keys() == dsn["model"].keys() and any(k.startswith("head1.") for k in ours)
    assert all(torch.equal(ours[k], v) for k, v in dsn["model"].items())


@pytest.mark.slow
def test_iterations_total_follows_the_init_chain(cfg, irnet_run, tmp_path):
    pretrain = total_iterations(cfg, "irnet")
    done = json.loads((irnet_run / "train_done.json").read_text())
    assert done["iterations"] == done["iterations_total"] == pretrain  # ImageNet adds none
    train(cfg, "voc", "dsn", tmp_path / "dsn", init=irnet_run / "checkpoint.pt")
    dsn = json.loads((tmp_path / "dsn" / "train_done.json").read_text())
    assert dsn["iterations"] == total_iterations(cfg, "dsn")
    assert dsn["iterations_total"] == pretrain + total_iterations(cfg, "dsn")
    train(cfg, "voc", "lc", tmp_path / "lc", init=tmp_path / "dsn" / "checkpoint.pt")
    lc_done = json.loads((tmp_path / "lc" / "train_done.json").read_text())
    assert lc_done["iterations_total"] == dsn["iterations_total"] + total_iterations(cfg, "lc")


@pytest.mark.slow
def test_every_checkpoint_records_its_inputs_and_resume_is_announced(cfg, irnet_run, tmp_path, caplog):
    from lc.data.paths import prepared_list_files, weights_path
    from lc.data.weights import sha256_file

    init = irnet_run / "checkpoint.pt"
    train(cfg, "voc", "dsn", tmp_path, init=init, stop_after=2)
    inputs = load_checkpoint(tmp_path / "resume.pt")["inputs"]
    from lc.data.digest_cache import data_digest
    from lc.data.paths import data_root

    train_list = prepared_list_files(cfg, "voc")["train"]
    assert inputs == {"init": sha256_file(init), "train_list": sha256_file(train_list),
                      "train_data": data_digest(data_root(cfg), train_list), "imagenet": None}
    caplog.set_level("INFO", logger="lc.training")
    train(cfg, "voc", "dsn", tmp_path, init=init)
    assert f"resuming from {tmp_path / 'resume.pt'} at iteration 2" in caplog.text
    assert load_checkpoint(tmp_path / "checkpoint.pt")["inputs"] == inputs
    scratch = tmp_path / "imagenet"
    train(cfg, "voc", "dsn", scratch, stop_after=2)
    assert load_checkpoint(scratch / "resume.pt")["inputs"]["imagenet"] == sha256_file(weights_path(cfg))


@pytest.mark.slow
def test_changed_init_restarts_from_scratch_with_the_reason(cfg, irnet_run, tmp_path, caplog):
    """The pretraining was redone: the old state must not be continued (nor a finished run kept)."""
    init = irnet_run / "checkpoint.pt"
    train(cfg, "voc", "dsn", tmp_path / "run", init=init)
    assert (tmp_path / "run" / "train_done.json").exists()
    other = tmp_path / "other_irnet.pt"
    payload = load_checkpoint(init)
    key = next(k for k in payload["model"] if k.endswith("conv.weight"))
    payload["model"][key] = payload["model"][key] * 1.01
    torch.save(payload, other)
    caplog.set_level("INFO", logger="lc.training")
    result = train(cfg, "voc", "dsn", tmp_path / "run", init=other, stop_after=2)
    assert "not resuming from" in caplog.text and "the --init checkpoint changed" in caplog.text
    assert result.iterations == 2 and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "train_done.json").exists()
    from lc.data.weights import sha256_file

    assert load_checkpoint(tmp_path / "run" / "resume.pt")["inputs"]["init"] == sha256_file(other)


def test_stale_inputs_names_the_changed_train_list(cfg, tmp_path):
    from lc.data.paths import prepared_list_files
    from lc.models.variants import VARIANTS
    from lc.training.initialise import input_digests, stale_inputs

    local = copy.deepcopy(cfg)
    local["data"]["root"] = str(tmp_path)
    local["model"]["pretrained"] = None
    local["train"]["allow_scratch"] = True
    lst = prepared_list_files(local, "voc")["train"]
    lst.parent.mkdir(parents=True)
    for name in ("b", "d"):
        (tmp_path / name).write_text(name)
    lst.write_text("a b\n")
    before = input_digests(local, "voc", VARIANTS["irnet"], None)
    lst.write_text("a b\nc d\n")
    after = input_digests(local, "voc", VARIANTS["irnet"], None)
    assert stale_inputs(before, before) == []
    assert stale_inputs(before, after) == [f"the training list file changed ({before['train_list'][:12]} -> "
                                           f"{after['train_list'][:12]})",
                                           "the training data (the list, its images and labels) changed "
                                           f"({before['train_data'][:12]} -> {after['train_data'][:12]})"]
    assert "older version" in stale_inputs(None, after)[0]


@pytest.mark.slow
def test_no_resume_removes_the_old_state_first(cfg, tmp_path):
    """A --no-resume run killed before its first checkpoint must not leave the old model as done."""
    train(cfg, "voc", "dsn", tmp_path)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "train_done.json").exists()
    train(cfg, "voc", "dsn", tmp_path / "partial", stop_after=2)
    (tmp_path / "resume.pt").write_bytes((tmp_path / "partial" / "resume.pt").read_bytes())
    train(cfg, "voc", "dsn", tmp_path, resume=False, stop_after=0)  # "killed" before any checkpoint
    assert not any((tmp_path / name).exists() for name in ("resume.pt", "checkpoint.pt", "train_done.json"))


@pytest.mark.slow
def test_mc_grad_scaler_state_survives_resume(cfg, tmp_path, monkeypatch):
    """Mixed precision forced on CPU: a run resumed at a member boundary keeps the scaler's state."""
    monkeypatch.setattr("lc.training.setup.amp_enabled", lambda train_cfg, device: True)
    per_member = cfg["train"]["iterations"]["mc"]
    train(cfg, "voc", "mc", tmp_path / "straight")
    train(cfg, "voc", "mc", tmp_path / "resumed", stop_after=per_member)
    assert load_checkpoint(tmp_path / "resumed" / "resume.pt")["scaler"]["_growth_tracker"] == per_member
    train(cfg, "voc", "mc", tmp_path / "resumed")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed["scaler"] == straight["scaler"] and straight["scaler"]["_growth_tracker"] > per_member
    assert all(torch.equal(v, resumed["model"][k]) for k, v in straight["model"].items())


# --- ImageNet weights, loss normalisation, progress ------------------------------------------
@pytest.mark.slow
def test_training_refuses_to_start_without_imagenet_weights(cfg, tmp_path):
    scratch = copy.deepcopy(cfg)
    scratch["model"]["pretrained"] = None
    with pytest.raises(ValueError, match=r"model.pretrained is null.*train.allow_scratch: true"):
        train(scratch, "voc", "irnet", tmp_path / "refused")
    scratch["train"]["allow_scratch"] = True
    assert train(scratch, "voc", "irnet", tmp_path / "scratch", stop_after=1).iterations == 1


@pytest.mark.slow
def test_frozen_bn_keeps_the_imagenet_statistics(cfg, tmp_path):
    from lc.data.paths import weights_path
    from lc.data.weights import load_weights_file
    from lc.models.irnet import IRNet
    from lc.models.timm_weights import load_timm_weights

    frozen = copy.deepcopy(cfg)
    frozen["train"]["pretrain_bn"] = "frozen"
    result = train(frozen, "voc", "irnet", tmp_path, stop_after=2)
    reference = IRNet(cfg["model"]["width_mult"], cfg["model"]["block_counts"])
    load_timm_weights(reference, load_weights_file(weights_path(cfg)))
    ours = result.model.backbone.state_dict()
    stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(ours[k], reference.state_dict()[k]) for k in stats)
    assert any(not torch.equal(ours[k], torch.zeros_like(ours[k])) for k in stats if k.endswith("mean"))


@pytest.mark.parametrize("normalization", ["region", "image"])
def test_loss_normalization(normalization):
    torch.manual_seed(0)
    logits = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    labels = torch.randint(0, 4, (2, 24, 24))
    small = downsample_labels(labels, (3, 3))
    region = torch.zeros(2, 3, 3, dtype=torch.bool)
    region[:, :2] = True
    full = torch.ones_like(region)
    out = cascade_loss(logits, [full, region, region], labels, [1.0, 1.0, 1.0], normalization=normalization)
    flat = logits[1].permute(0, 2, 3, 1)
    summed = F.cross_entropy(flat[region], small[region], reduction="sum")
    divisor = region.sum() if normalization == "region" else small.numel()
    assert torch.allclose(out.stage_loss[1], summed / divisor)
    assert torch.allclose(out.stage_loss[0], F.cross_entropy(logits[0], small))  # the full region: equal


@pytest.mark.slow
def test_progress_is_one_log_line_per_row_without_a_terminal(cfg, tmp_path, caplog, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # also under `pytest -s` at a terminal
    caplog.set_level("INFO", logger="lc.training")
    train(cfg, "voc", "dsn", tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train voc/dsn: iteration")]
    every = cfg["train"]["log_every"]
    total = total_iterations(cfg, "dsn")
    assert [int(line.split()[3].split("/")[0]) for line in lines] == list(range(every, total + 1, every))
    assert all("stages 1/2/3:" in line and " lr " in line and "it/s" in line for line in lines)


@pytest.mark.slow
def test_refactored_loop_reproduces_the_recorded_weights(cfg, tmp_path):
    """On every machine, each variant's float64 run matches the recorded losses and per-tensor norms
    (tests/train_reference.py); where a bitwise reference exists for this machine's key (torch,
    ATen CPU capability, CPU, MKL, oneDNN), the float32 weights are bitwise the recorded ones."""
    from train_reference import (
        REFERENCE_FILE,
        bitwise_reference,
        data_digest,
        data_versions,
        float64_summaries,
        reference_digests,
        summary_mismatches,
    )

    recorded = json.loads(REFERENCE_FILE.read_text())
    if data_digest(cfg) != recorded["data_digest"]:
        pytest.skip(f"the synthetic training data differ from the recorded ones ({data_versions()} made "
                    "other pixels): the reference does not apply; `python tests/train_reference.py record` "
                    "makes one")
    summaries = float64_summaries(cfg, tmp_path / "float64")
    assert summaries.keys() == recorded["float64_summary"]["runs"].keys()
    problems = summary_mismatches(recorded["float64_summary"]["runs"], summaries)
    assert not problems, "\n".join(problems[:20])
    bitwise = bitwise_reference(recorded)
    if bitwise is not None:  # else: no bitwise reference for this machine; the float64 check above stands
        assert reference_digests(cfg, tmp_path / "float32") == bitwise


def _skip_third_step(make):
    def optimizer(module, train_cfg):
        opt, calls = make(module, train_cfg), []
        step = opt.step

        def maybe_step(*args, **kwargs):
            calls.append(1)
            return None if len(calls) == 3 else step(*args, **kwargs)

        opt.step = maybe_step
        return opt
    return optimizer


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["lr 1% higher", "one step skipped"])
def test_the_reference_check_fails_a_wrong_loop(cfg, tmp_path, monkeypatch, wrong):
    """The float64 check of the test above is not vacuous: small changes to the loop fail it."""
    from train_reference import REFERENCE_FILE, float64_summaries, summary_mismatches

    import lc.training.loop as loop

    recorded = json.loads(REFERENCE_FILE.read_text())["float64_summary"]["runs"]
    runs = {"variants": ("irnet", "dsn"), "routed": ()}
    assert not summary_mismatches(recorded, float64_summaries(cfg, tmp_path / "right", **runs))
    wrong_cfg = copy.deepcopy(cfg)
    if wrong == "lr 1% higher":
        wrong_cfg["train"]["lr"] *= 1.01
    else:
        monkeypatch.setattr(loop, "_optimizer", _skip_third_step(loop._optimizer))
    problems = summary_mismatches(recorded, float64_summaries(wrong_cfg, tmp_path / "wrong", **runs))
    assert {p.split(":")[0] for p in problems} == {"irnet", "dsn"}, problems


def test_init_variant_follows_cascade_init():
    from lc.models.variants import init_variant

    assert [init_variant(v, "dsn") for v in ("irnet", "dsn", "dsn_dropout", "lc", "mc")] == \
        ["imagenet", "irnet", "dsn", "dsn", "irnet"]
    assert [init_variant(v, "irnet") for v in ("dsn_dropout", "lc")] == ["irnet", "irnet"]


@pytest.mark.slow
def test_training_split_is_read_digested_and_recorded(cfg, tmp_path):
    """--split trainval_aug (the VOC test-server model) trains on that list, digests it into the
    checkpoint (a run on another split does not resume from it) and says so in train_done.json."""
    from lc.data.paths import prepared_list_files
    from lc.data.weights import sha256_file

    short = copy.deepcopy(cfg)
    short["train"]["iterations"]["cascade"] = 2
    train(short, "voc", "dsn", tmp_path, stop_after=1, split="trainval_aug")
    lists = prepared_list_files(cfg, "voc")
    stored = load_checkpoint(tmp_path / "resume.pt")["inputs"]["train_list"]
    assert stored == sha256_file(lists["trainval_aug"]) != sha256_file(lists["train"])
    result = train(short, "voc", "dsn", tmp_path, split="trainval_aug")
    assert result.iterations == 2
    assert json.loads((tmp_path / "train_done.json").read_text())["split"] == "trainval_aug"
    with pytest.raises(ValueError, match="unknown split"):
        train(short, "voc", "dsn", tmp_path / "other", split="testing")
