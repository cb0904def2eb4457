"""Every setting of the paper preset has a source (lc/config.sources.yaml), and the README agrees."""

from __future__ import annotations

import re
from pathlib import Path

from lc.config import load_config
from lc.report.config_sources import (
    flat_keys,
    load_sources,
    readme_block,
    source_of,
    source_problems,
    sources_markdown,
)

REPO = Path(__file__).resolve().parents[1]


def _paper_cfg() -> dict:
    return load_config(REPO / "config.yaml", preset="paper")


def test_every_paper_preset_key_has_a_source():
    readme = (REPO / "README.md").read_text()
    assert source_problems(_paper_cfg(), load_sources(), readme) == []


def test_a_key_without_a_source_is_reported():
    cfg = _paper_cfg()
    cfg["train"]["new_knob"] = 3
    sources = load_sources()
    del sources["train.lr"]
    problems = source_problems(cfg, sources)
    assert any(p.startswith("train.new_knob: no source") for p in problems)
    assert any(p.startswith("train.lr: no source") for p in problems)


def test_a_misquote_and_a_kind_without_its_field_are_reported():
    sources = load_sources()
    sources["model.freeze_bn"] = {"kind": "paper", "where": "Sec. 3.3", "quote": "BN is frozen."}
    sources["train.lr"] = {"kind": "ours"}
    problems = source_problems(_paper_cfg(), sources, "some readme text")
    assert any("model.freeze_bn: the quote" in p for p in problems)
    assert any(p.startswith("train.lr: a ours source needs `why`") for p in problems)


def test_the_readme_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    assert readme_block(readme) == sources_markdown(_paper_cfg(), load_sources()), (
        "README's sources table is stale: paste `lc config --preset paper --sources` between its markers")


def test_the_paper_is_named_only_for_what_it_states():
    """Values the paper does not give are not labelled as the paper's."""
    sources = load_sources()
    for key in ("train.lr", "train.head_lr_mult", "train.poly_power", "train.weight_decay",
                "train.iterations.pretrain", "train.amp", "train.scale_range", "train.optimizer",
                "evaluate.crf.bilateral_sxy"):
        assert source_of(key, sources)[1]["kind"] != "paper", key


def test_the_choices_table_names_keys_with_sources():
    """Every config key the README's prose 'our choices' table names exists and has a source."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Where the paper is silent: our choices", 1)[1].split("\n## ", 1)[0]
    prose = section.split("The choices in prose:", 1)[1]
    named = set()
    for line in prose.splitlines():
        if line.startswith("|") and line.count("|") >= 4:
            where = line.rstrip().rstrip("|").rsplit("|", 1)[-1]
            named |= set(re.findall(r"`((?:model|train|evaluate|bench)\.[a-z_.]+)`", where))
    assert len(named) > 10, named
    keys = {key for key, _ in flat_keys(_paper_cfg())}
    sources = load_sources()
    for key in sorted(named):
        assert any(k == key or k.startswith(key + ".") for k in keys), f"{key}: not a config key"
        assert source_of(key, sources) is not None, f"{key} (README choices table) has no source"
