# Shared by workflow/rules/backbones.smk: the backbones of the experiment, their paths and args.
from lc.config import with_backbone
from lc.models.variants import init_variant

BB = CFG.get("backbones") or {"compare": [], "models": {}, "datasets": []}
BB_NAMES = list(BB["compare"])
BB_OTHERS = [b for b in BB_NAMES if b != "irnet"]  # trained here; irnet's runs are the main ones
BB_DATASETS = list(BB.get("datasets", ["voc"]))
BB_CFG = {b: with_backbone(CFG, b) for b in BB_NAMES}
BB_VARIANTS = ("irnet", "dsn", "lc")
BB_RHOS = sorted({float(r) for r in BB.get("rhos", [])} | {float(EV["rho"])}, reverse=True)
for _b in BB_OTHERS:
    if BB_CFG[_b]["model"].get("weights_file") != f"{_b}.pth":
        raise ValueError(f"config.yaml backbones.models.{_b}.weights_file must be {_b}.pth (the workflow's "
                         "weights rule names the file after the backbone)")


def bb_out(kind, backbone, dataset):
    return out("backbone_file", backbone, dataset, kind)


def bb_checkpoint(backbone, dataset, variant):
    return out("backbone_checkpoint", backbone, dataset, variant)


def bb_args(backbone):
    return f"{LC_ARGS} --backbone {backbone}"


def bb_reads(backbone, *keys):
    return reads(*keys, f"backbones.models.{backbone}")


def bb_train_reads(backbone, bb_variant):
    """The config keys `lc train --backbone` reads for one variant (`variant_train_keys`, as IRNet's
    runs: workers, logging and checkpointing intervals rerun nothing)."""
    return bb_reads(backbone, "seed", "model", *variant_train_keys(get_variant(bb_variant)))


def _bb_init(wc):
    if wc.bb_variant == "irnet":
        return []
    source = "irnet" if wc.bb_variant == "dsn" else init_variant(wc.bb_variant, CFG["train"]["cascade_init"])
    return bb_checkpoint(wc.backbone, wc.dataset, source)
