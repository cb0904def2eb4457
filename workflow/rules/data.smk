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
        input:
            config=ancient(RESOLVED_CONFIG),
        output:
            archives=[f"{MIRROR}/{name}" for name in FILENAME_TO_KEY],
            md5sums=f"{MIRROR}/MD5SUMS",
            # the ImageNet stand-in in timm's layout, at the preset's width, and its SHA-256
            weights=f"{MIRROR}/{WEIGHTS_FILENAME}",
            weights_sha256=f"{MIRROR}/{WEIGHTS_FILENAME}.sha256",
        params:
            lc=LC,
            lc_args=LC_ARGS,
            settings=reads("seed", "data.synthetic_sizes", "model.width_mult"),
        log:
            log("data", "synth"),
        threads: threads_for("prepare")
        resources:
            **resources_for("prepare"),
        conda:
            ENV_CPU
        shell:
            "{params.lc} synth {params.lc_args} > {log} 2>&1"


rule download:
    """One archive from its public host (or data.mirror), verified by MD5."""
    input:
        config=ancient(RESOLVED_CONFIG),
        mirror=lambda wc: [f"{MIRROR}/{wc.filename}", f"{MIRROR}/MD5SUMS"] if SYNTHETIC else [],
    output:
        f"{DATA}/archives/{{filename}}",
    params:
        lc=LC,
        lc_args=LC_ARGS,
        key=lambda wc: FILENAME_TO_KEY[wc.filename],
        settings=lambda wc: reads(f"data.archives.{FILENAME_TO_KEY[wc.filename]}", "data.mirror"),
    log:
        log("data", "download_{filename}"),
    threads: threads_for("download")
    resources:
        **resources_for("download"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} download {params.key} {params.lc_args} --out {output} > {log} 2>&1"


for _dataset in PREPARE_ARCHIVES:

    rule:
        """VOC 2012 + SBD -> train_aug, val (and test); Cityscapes fine annotations -> trainIds."""
        name:
            f"prepare_{_dataset}"
        input:
            config=ancient(RESOLVED_CONFIG),
            archives=[archive(key) for key in PREPARE_ARCHIVES[_dataset]],
        output:
            lists=[str(p) for p in prepared_list_files(CFG, _dataset).values()],
            labels=directory(label_dir(_dataset)),
            # the extracted archives: the images the jobs read stay there
            raw=[directory(d) for d in extracted_dirs(_dataset)],
        params:
            lc=LC,
            lc_args=LC_ARGS,
            dataset=_dataset,
            # real data (the paper preset): every archive hashed again, no cached digest trusted
            verify="" if SYNTHETIC else "--verify",
        log:
            log("data", f"prepare_{_dataset}"),
        threads: threads_for("prepare")
        resources:
            **resources_for("prepare"),
        conda:
            ENV_CPU
        shell:
            "{params.lc} prepare {params.dataset} {params.verify} {params.lc_args} > {log} 2>&1"
