# Runs, protocols and the rule files' helper functions (Snakemake's lint wants them apart from rules).

# --- training runs ----------------------------------------------------------------------------
# A run folder runs/<dataset>/<run>: a variant (Table 2), `lc_rho<rho>` (one LC per rho of
# evaluate.rho_sweep when evaluate.sweep_retrain), or `lc_<split>` (the VOC test export's model
# when evaluate.export_train_split is not train_aug).
CASCADE_INIT = CFG["train"]["cascade_init"]
# Variants that start from train.cascade_init (the routed single-network cascades: lc, dsn_dropout).
FROM_CASCADE_INIT = [v.name for v in VARIANTS.values() if v.model_kind == "cascade" and v.routed]
TRAIN_RHO = float(CFG["train"]["rho"])
SWEEP_RETRAIN = bool(EV["sweep_retrain"])
RHO_SWEEP = [float(r) for r in EV["rho_sweep"]]
EXPORT_SPLIT = EV["export_train_split"]
# the Cityscapes export's test protocol (single | ms | ms_crf), evaluated on val for Table 5 too
CITYSCAPES_EXPORT_PROTOCOL = (EV.get("cityscapes_export") or {}).get("protocol", "single")
BN_RECALIBRATION = int(CFG["train"].get("bn_recalibration_images", 0) or 0)
TABLE2_RUNS = [*TABLE2_ORDER, BUDGET_CONTROL]  # the paper's rows and the equal-budget control
DENSE_VARIANT = "dsn"  # LC at rho = 1 routes nothing: it is the DSN run (Table 1's first row)


def rho_run(rho):
    """The run whose LC model was trained at threshold rho (evaluate.sweep_retrain)."""
    rho = float(rho)
    if rho >= 1.0:
        return DENSE_VARIANT
    if abs(rho - TRAIN_RHO) < 1e-9:
        return "lc"
    return outputs.rho_run_name(rho)


def export_run(dataset):
    return "lc" if dataset != "voc" or EXPORT_SPLIT == TRAIN_SPLIT else outputs.split_run_name("lc", EXPORT_SPLIT)


def run_spec(run):
    """(variant, rho flag or None, split) of a run folder name."""
    if run == BUDGET_CONTROL:
        return BUDGET_CONTROL_VARIANT, None, TRAIN_SPLIT
    if run in VARIANTS:
        return run, None, TRAIN_SPLIT
    if run.startswith("lc_rho"):
        return "lc", float(run[len("lc_rho"):]), TRAIN_SPLIT
    if run == outputs.split_run_name("lc", EXPORT_SPLIT):
        return "lc", None, EXPORT_SPLIT
    raise ValueError(f"unknown training run {run!r}")


def init_run(run):
    """The run a run starts from (None: ImageNet weights or scratch, see model.pretrained)."""
    if run == BUDGET_CONTROL:  # where LC starts, for LC's iterations: LC's iterations_total
        return init_run(BUDGET_CONTROL_OF)
    variant = get_variant(run_spec(run)[0])
    if variant.init_from == "imagenet":
        return None
    return CASCADE_INIT if variant.name in FROM_CASCADE_INIT else variant.init_from


def pretrained_weights():
    """model.pretrained: `timm` -> the file rule `weights` writes; a path -> that file; null -> none."""
    source = CFG["model"]["pretrained"]
    if not source:
        return []
    return [str(weights_path(CFG))] if source == "timm" else [source]


def checkpoint(dataset, run):
    return out("checkpoint", dataset, run)


def train_reads(run):
    """The config keys `lc train` reads for one run (the budget of its variant only, etc.)."""
    variant = get_variant(run_spec(run)[0])
    model_keys = [k for k in CFG["model"] if variant.init_from == "imagenet" or k not in IMAGENET_KEYS]
    keys = ["seed", *(f"model.{k}" for k in model_keys),
            *variant_train_keys(variant, reads_rho=run_spec(run)[1] is None)]
    return keys + region_reads(variant.routed and variant.model_kind == "cascade")


def variant_train_keys(variant, reads_rho=True):
    """The `train.*` keys `lc train` reads for a variant (IRNet's runs and the backbones' alike);
    reads_rho: False for a run whose rho is given on its command line (`--rho`)."""
    def present(names):
        return [f"train.{k}" for k in names if k in CFG["train"]]

    keys = [*present(TRAIN_RESULT_KEYS), f"train.iterations.{variant.budget_key}"]
    if variant.stage_losses:
        keys += present(STAGE_LOSS_KEYS)
    if variant.routed and reads_rho:
        keys.append("train.rho")
    if variant.init_from == "imagenet":
        keys += present(PRETRAIN_KEYS)
    return keys


def region_reads(runs_regions=True):
    """The `region` block (planned path, buckets, CUDA graphs) where a command runs region stages."""
    return ["region"] if runs_regions and "region" in CFG else []


def eval_region_reads(run):
    """`region` for an evaluation of `run` whose cascade routes at evaluation (lc)."""
    variant = get_variant(run_spec(run)[0])
    return region_reads(variant.routed_at_eval and variant.model_kind == "cascade")


def recalibration_reads():
    """The config keys `lc recalibrate-bn` reads."""
    return ["seed", "train.rho", *(f"model.{k}" for k in CFG["model"]),
            *(f"train.{k}" for k in ("crop_size", "batch_size", "scale_range", "pretrain_bn",
                                     "bn_recalibration_images"))]


# model keys only pretraining reads (the others start from a checkpoint that already holds them)
IMAGENET_KEYS = {"pretrained", "pretrained_sha256", "timm_blocks"}
# train keys that change what every training run produces
TRAIN_RESULT_KEYS = ("crop_size", "batch_size", "optimizer", "lr", "head_lr_mult", "momentum", "weight_decay",
                     "poly_power", "scale_range", "amp")
# train keys of the variants trained with one loss per stage (DSN, LC, ...)
STAGE_LOSS_KEYS = ("stage_loss_weights", "loss_normalization")
# train keys of pretraining from ImageNet weights only
PRETRAIN_KEYS = ("pretrain_bn", "allow_scratch", "bn_recalibration_images")


# --- evaluation -------------------------------------------------------------------------------
def protocol_reads(protocol):
    """evaluate.* keys a test protocol reads (single scale / multi-scale (+ flip) / + dense CRF)."""
    keys = {"single": [], "ms": ["evaluate.scales", "evaluate.flip"]}.get(protocol)
    if keys is None:
        keys = protocol_reads("ms") + ["evaluate.crf"]
    return keys + [k for k in ("evaluate.fusion",) if "fusion" in EV and protocol != "single"]


def eval_tag(tag):
    """eval_<tag>.json -> (split, protocol): 'val_ms_crf' -> ('val', 'ms_crf')."""
    split, _, suffix = tag.partition("_")
    protocol = next(p for p, s in outputs.EVAL_PROTOCOLS.items() if s == (f"_{suffix}" if suffix else ""))
    return split, protocol


PROTOCOL_FLAGS = {"single": "", "ms": "--multi-scale", "ms_crf": "--multi-scale --crf"}


# --- helpers of the rule files ------------------------------------------------------------

def recalibrated(run):
    """Whether `run` starts from the BN-recalibrated ImageNet weights (rule recalibrate_bn)."""
    return BN_RECALIBRATION > 0 and get_variant(run_spec(run)[0]).init_from == "imagenet"


def _train_init(wc):
    parent = init_run(wc.run)
    if parent:
        return checkpoint(wc.dataset, parent)
    return out("bn_start", wc.dataset) if recalibrated(wc.run) else pretrained_weights()


def _train_flags(wc, input):
    variant, rho, split = run_spec(wc.run)
    flags = [f"--variant {variant}"]
    if rho is not None:
        flags.append(f"--rho {rho:g}")
    if split != TRAIN_SPLIT:
        flags.append(f"--split {split}")
    if init_run(wc.run) or recalibrated(wc.run):
        flags.append(f"--init {input.init}")
    return " ".join(flags)


def rho_models():
    """(rho, run) of the routed rhos of Table 1 that have an LC model of their own (besides the main LC
    run, which `--checkpoint` is): the models that route Fig. 7(a)'s timings (evaluate.sweep_retrain)."""
    return [(rho, run) for rho, run in sweep_pairs() if rho < 1.0 and run not in ("lc", DENSE_VARIANT)]


def sweep_pairs():
    """(rho, run) of Table 1: one LC per rho (evaluate.sweep_retrain) or the main LC at every rho."""
    return [(rho, rho_run(rho) if SWEEP_RETRAIN else "lc") for rho in RHO_SWEEP]


def bench_settings(kind):
    keys = BENCH_READS[kind] + (BENCH_MODEL_READS if kind in BENCH_NEEDS_MODEL else []) + region_reads()
    paper = reads("model", cfg=PAPER_CFG) if kind in BENCH_NEEDS_MODEL else ""
    return reads(*keys) + paper


def bench_outputs(kind):
    csv = out("bench", kind)
    if kind == "op":  # the op benchmark also plots its speedups
        return {"csv": report(csv, caption="../report/bench_csv.rst", category="Benchmarks",
                              labels={"benchmark": "region conv op (CSV)"}),
                "png": report(out("bench", "op_plot"), caption="../report/bench_op.rst",
                                  category="Benchmarks", labels={"benchmark": "region conv op"})}
    return {"csv": report(csv, caption="../report/bench_csv.rst", category="Benchmarks",
                          labels={"benchmark": kind})}


def eval_json(dataset, run, protocol="single"):
    return out("eval_json", dataset, run, "val", protocol)


def table_inputs(number):
    """The run outputs table `number` reads (lc.report.tables); only what this preset produces."""
    voc = "voc" in DATASETS
    lc_protocols = [eval_json("voc", "lc", p) for p in outputs.EVAL_PROTOCOLS] if voc else []
    if number == 1:
        return [SWEEP_CSV] if voc else []
    if number == 2:
        return [f for v in TABLE2_RUNS for f in (eval_json("voc", v), out("train_done", "voc", v))] if voc else []
    if number == 3:
        return [out("bench", "models")] + ([eval_json("voc", "lc"), eval_json("voc", "irnet"), SWEEP_CSV] if voc else [])
    if number == 4:
        exports = [f"{R}/{outputs.VOC_TEST_ARCHIVE}", out("export_summary", outputs.VOC_TEST_ARCHIVE)] if VOC_TEST else []
        return lc_protocols + exports
    if number == 5:
        if "cityscapes" not in DATASETS:
            return []
        archive = outputs.CITYSCAPES_TEST_ARCHIVE
        protocols = dict.fromkeys(["single", CITYSCAPES_EXPORT_PROTOCOL])
        return [*(eval_json("cityscapes", "lc", p) for p in protocols), f"{R}/{archive}",
                out("export_summary", archive)]
    return [out("bench", "table6"), out("bench", "models")] + lc_protocols


def run_chain(run):
    """`run` and every run it starts from, back to the ImageNet-initialised pretraining."""
    chain = [run]
    while init_run(chain[-1]):
        chain.append(init_run(chain[-1]))
    return chain


def trained_runs():
    """(dataset, run) of the runs the tables need: Table 2's variants on VOC, LC's chain on Cityscapes."""
    runs = [("voc", v) for v in TABLE2_RUNS] if "voc" in DATASETS else []
    if "cityscapes" in DATASETS:
        runs += [("cityscapes", r) for r in reversed(run_chain("lc"))]
    return runs


_TRAIN_LOG = Path(outputs.train_log("d", "r")).name
_TRAIN_DONE = Path(outputs.train_done("d", "r")).name


def figure_input(rel):
    """The files a figure input names: a wildcard `runs/{dataset}/{variant}/...` stands for every
    trained run; a run's train_log.csv is stood for by its train_done.json (complete once it exists)."""
    if rel.endswith(_TRAIN_LOG):
        rel = rel[: -len(_TRAIN_LOG)] + _TRAIN_DONE
    if "{dataset}" in rel:
        return [f"{R}/{rel.format(dataset=d, variant=r)}" for d, r in trained_runs()]
    return [f"{R}/{rel}"]
