# Data: synthetic archives (demo/test) -> download (checksummed) -> prepare (extract + index).
import re

ARCHIVE_KEYS = [k for k in CFG["data"]["archives"] if k != "voc2012_test" or VOC_TEST]
FILENAME_TO_KEY = {CFG["data"]["archives"][k]["filename"]: k for k in ARCHIVE_KEYS}
MIRROR = CFG["data"]["mirror"]


wildcard_constraints:
    filename="|".join(re.escape(f) for f in FILENAME_TO_KEY),


if SYNTHETIC:

    rule synth:
        """Synthetic data sets in the exact archive formats of VOC 2012, SBD and Cityscapes."""
        output:
            archives=[f"{MIRROR}/{name}" for name in FILENAME_TO_KEY],
            md5sums=f"{MIRROR}/MD5SUMS",
        params:
            lc_args=LC_ARGS,
            settings=section("seed", "data"),
        log:
            f"{LOGS}/data/synth.log",
        threads: threads_for("prepare")
        resources:
            **resources_for("prepare"),
        conda:
            ENV_CPU
        shell:
            "lc synth {params.lc_args} > {log} 2>&1"


rule download:
    """One archive from its public host (or data.mirror), verified by MD5."""
    input:
        lambda wc: [f"{MIRROR}/{wc.filename}", f"{MIRROR}/MD5SUMS"] if SYNTHETIC else [],
    output:
        f"{DATA}/archives/{{filename}}",
    params:
        lc_args=LC_ARGS,
        key=lambda wc: FILENAME_TO_KEY[wc.filename],
    log:
        f"{LOGS}/data/download_{{filename}}.log",
    threads: threads_for("download")
    resources:
        **resources_for("download"),
    conda:
        ENV_CPU
    shell:
        "lc download {params.key} {params.lc_args} --out {output} > {log} 2>&1"


rule prepare_voc:
    """VOC 2012 + SBD -> the 10,582-image train_aug set, val (and test when configured)."""
    input:
        [archive("voc2012_trainval"), archive("sbd")] + ([archive("voc2012_test")] if VOC_TEST else []),
    output:
        prepared("voc"),
    params:
        lc_args=LC_ARGS,
    log:
        f"{LOGS}/data/prepare_voc.log",
    threads: threads_for("prepare")
    resources:
        **resources_for("prepare"),
    conda:
        ENV_CPU
    shell:
        "lc prepare voc {params.lc_args} > {log} 2>&1"


rule prepare_cityscapes:
    """Cityscapes fine annotations -> trainIds, with train/val/test lists."""
    input:
        archive("cityscapes_gtfine"),
        archive("cityscapes_leftimg8bit"),
    output:
        prepared("cityscapes"),
    params:
        lc_args=LC_ARGS,
    log:
        f"{LOGS}/data/prepare_cityscapes.log",
    threads: threads_for("prepare")
    resources:
        **resources_for("prepare"),
    conda:
        ENV_CPU
    shell:
        "lc prepare cityscapes {params.lc_args} > {log} 2>&1"
