"""lc.report.tables on small hand-made run outputs (the README's file contracts) in tmp_path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import eval_json, make_fake_run

from lc.config import load_config
from lc.models.variants import BUDGET_CONTROL, BUDGET_CONTROL_LABEL, TABLE2_ORDER, get_variant
from lc.report.paper import load_paper_table
from lc.report.tables import CITED, TABLE_FILES, build_table, render_markdown, write_tables

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(REPO / "config.yaml", preset="test")


def test_table1_columns_paper_and_differences(tmp_path, cfg):
    table = build_table(1, make_fake_run(tmp_path), cfg)
    for column in ("rho", "stage1_pct", "stage2_pct", "miou", "paper_stage1_pct", "paper_miou", "diff_miou",
                   "preset", "split", "device", "scales", "crf", "mask_source", "note"):
        assert column in table.columns
    paper = load_paper_table(1)
    # every published rho is a row, with the published numbers unchanged
    assert set(paper["rho"].round(3)) <= set(table["rho"].round(3))
    merged = table.merge(paper, on="rho", suffixes=("", "_pub"))
    assert np.allclose(merged["paper_miou"], merged["miou_pub"])
    row = table[table["rho"] == 0.9].iloc[0]
    assert row["miou"] == 62.0 and row["diff_miou"] == pytest.approx(62.0 - 71.20)
    assert row["diff_stage1_pct"] == pytest.approx(40.0 - 44)
    # a published rho the test preset did not sweep: our columns empty, a reason given
    missing = table[table["rho"] == 0.985].iloc[0]
    assert pd.isna(missing["miou"]) and "rho_sweep" in missing["note"]


def test_table2_rows_and_missing_run(tmp_path, cfg):
    results = make_fake_run(tmp_path)
    (results / "runs/voc/mc/eval_val.json").unlink()
    table = build_table(2, results, cfg)
    labels = [get_variant(v).label for v in TABLE2_ORDER]
    labels.insert(labels.index("DSN") + 1, BUDGET_CONTROL_LABEL)
    assert list(table["method"]) == labels
    paper_rows = table[table["run"] != BUDGET_CONTROL]
    assert list(paper_rows["paper_miou"]) == list(load_paper_table(2)["miou"])  # matched to the paper's names
    lc = table.set_index("variant").loc["lc"]
    assert lc["miou"] == 62.5 and lc["paper_miou"] == 73.91
    assert lc["diff_miou"] == pytest.approx(62.5 - 73.91)
    assert lc["stage1_pct"] == pytest.approx(25.0)
    mc = table.set_index("variant").loc["mc"]
    assert pd.isna(mc["miou"]) and pd.isna(mc["diff_miou"]) and "eval_val.json missing" in mc["note"]
    assert "three independent networks of depth 1, 2 and 3" in mc["note"]
    assert mc["paper_miou"] == 44.20  # the paper's number is shown even when ours is missing


def test_table2_equal_budget_control_row(tmp_path, cfg):
    table = build_table(2, make_fake_run(tmp_path), cfg).set_index("run")
    control, lc = table.loc[BUDGET_CONTROL], table.loc["lc"]
    assert control["variant"] == "dsn" and control["miou"] == 61.5
    assert control["iterations_total"] == lc["iterations_total"] == 50
    assert control["init_from"] == lc["init_from"]
    assert pd.isna(control["paper_miou"]) and pd.isna(control["diff_miou"])  # not in the paper
    assert "not in the paper" in control["note"] and "; " not in control["note"]
    assert "LC - IRNet: +2.50" in control["note"] and "LC - this row: +1.00" in control["note"]


def test_table3_cites_baseline_miou_and_times_everything(tmp_path, cfg):
    table = build_table(3, make_fake_run(tmp_path), cfg).set_index("method")
    paper = load_paper_table(3).set_index("method")
    assert table.loc["DeepLab-v2", "miou_source"] == CITED
    assert table.loc["DeepLab-v2", "miou"] == paper.loc["DeepLab-v2", "miou"]
    assert pd.isna(table.loc["DeepLab-v2", "diff_miou"])
    assert table.loc["LC", "ms"] == 12.0 and table.loc["LC", "paper_ms"] == 65.1
    # our CPU time at 64 px is no measure against the paper's GPU time at 512 px: no difference, a note
    assert pd.isna(table.loc["LC", "diff_ms"]) and pd.isna(table.loc["LC", "diff_fps"])
    assert "no time difference: ours cpu at 64 px" in table.loc["LC", "note"]
    assert table.loc["LC", "diff_miou"] == pytest.approx(62.5 - 73.91)
    assert table.loc["LC (fast)", "miou"] == 58.0  # from the sweep at evaluate.fast_rho = 0.8
    assert table.loc["LC (fast)", "model"] == "runs/voc/lc re-thresholded at rho 0.8"
    assert "re-thresholded" in table.loc["LC (fast)", "miou_source"]
    assert table.loc["IRNet (dense)", "ms"] == 18.0 and pd.isna(table.loc["IRNet (dense)", "paper_ms"])
    assert "reduced network size" in table.loc["LC", "note"]


def test_table3_without_benchmarks_stays_empty_with_reason(tmp_path, cfg):
    table = build_table(3, make_fake_run(tmp_path, with_bench=False), cfg).set_index("method")
    assert table["ms"].isna().all() and table["fps"].isna().all()
    assert all("bench/table3_speed.csv missing" in note for note in table["note"])


def test_table4_per_class_val_beside_paper_test(tmp_path, cfg):
    table = build_table(4, make_fake_run(tmp_path), cfg)
    paper = load_paper_table(4)
    classes = [c for c in paper.columns if c not in ("method", "miou")]
    assert set(classes) <= set(table.columns) and "submission_archive" in table.columns
    ours = table[table["method"] == "LC (ours) multi-scale + CRF"].iloc[0]
    assert ours["miou"] == 64.0 and ours["evaluated_split"] == "val"
    cited = table[table["method"] == "FCN (paper)"].iloc[0]
    assert cited["source"] == CITED and cited["aeroplane"] == 76.8
    # ours is val, the paper's test: both numbers side by side, no difference across splits
    assert table[table["method"] == "LC (paper)"].iloc[0]["miou"] == 80.3
    diff = table[table["method"].str.startswith("diff")].iloc[0]
    assert pd.isna(diff["miou"]) and pd.isna(diff["aeroplane"])
    assert "no difference: our number is val, the paper's test" in diff["note"]
    # no VOC test export in the fake run: empty path, reason given
    assert ours["submission_archive"] == "" and "voc_test_comp6.tar.gz missing" in ours["note"]


def test_table5_cityscapes_and_archive(tmp_path, cfg):
    table = build_table(5, make_fake_run(tmp_path), cfg)
    ours = table[table["source"] == "reproduced"].iloc[0]
    assert ours["miou"] == 50.0 and ours["submission_archive"].endswith("export/cityscapes_test.zip")
    assert "2 test predictions" in ours["note"]
    assert len(table) == 1 + len(load_paper_table(5)) + 1


def test_table5_shows_the_configured_cityscapes_protocol(tmp_path, cfg):
    results = make_fake_run(tmp_path)
    (results / "runs/cityscapes/lc/train_done.json").write_text(json.dumps({"split": "train"}))
    (results / "runs/cityscapes/lc/eval_val_ms.json").write_text(
        json.dumps(eval_json("cityscapes", "lc", 52.0, (0.75, 1.0), True)))
    (results / "export/cityscapes_test.json").write_text(json.dumps(
        {"num_images": 2, "protocol": {"scales": [0.75, 1.0], "crf": False}}))
    ms_cfg = copy.deepcopy(cfg)
    ms_cfg["evaluate"]["cityscapes_export"] = {"train_split": "train", "protocol": "ms"}
    ours = build_table(5, results, ms_cfg).query("source == 'reproduced'").set_index("method")
    assert list(ours.index) == ["LC (ours)", "LC (ours) multi-scale"]
    assert ours.loc["LC (ours) multi-scale", "miou"] == 52.0
    assert ours.loc["LC (ours) multi-scale", "scales"] and ours.loc["LC (ours)", "crf"] in (False, "False", 0)
    assert (ours["train_split"] == "train").all()
    # the archive goes with the row of the protocol it was made with
    assert ours.loc["LC (ours) multi-scale", "submission_archive"].endswith("cityscapes_test.zip")
    assert ours.loc["LC (ours)", "submission_archive"] == ""


def test_table5_missing_dataset(tmp_path, cfg):
    table = build_table(5, make_fake_run(tmp_path, with_cityscapes=False), cfg)
    ours = table[table["source"] == "reproduced"].iloc[0]
    assert pd.isna(ours["miou"]) and pd.isna(ours["road"])
    assert "runs/cityscapes/lc/eval_val.json missing" in ours["note"]


def test_table6_settings(tmp_path, cfg):
    table = build_table(6, make_fake_run(tmp_path), cfg)
    ours = table[table["source"] == "reproduced"].reset_index(drop=True)
    assert list(zip(ours["multi_scale"], ours["crf"], strict=True)) == [("no", "no"), ("yes", "no"),
                                                                        ("yes", "yes")]
    assert list(ours["miou"]) == [62.5, 63.0, 64.0]
    assert list(ours["fps"]) == [83.3, 33.3, 3.3]
    assert list(ours["paper_fps"]) == [14.3, 7.7, 1.0]
    # cost against single scale: ours from the benchmark's paired ratios, the paper's from its FPS
    assert list(ours["time_vs_single_scale"]) == [1.0, 2.4, 24.0]
    assert list(ours["paper_time_vs_single_scale"]) == [1.0, 1.86, 14.3]
    # val beside test: both numbers kept, no difference across splits, the reason in the note
    assert ours.loc[2, "miou"] == 64.0 and ours.loc[2, "paper_miou"] == 80.3
    assert ours["diff_miou"].isna().all()
    assert (ours["split"] == "val").all() and (ours["paper_split"] == "test").all()
    assert all("no difference: our number is val, the paper's test" in note for note in ours["note"])
    assert ours.loc[0, "params_m"] == 0.35 and ours.loc[0, "paper_params_m"] == 35.5
    assert (table[table["source"] == CITED]["method"].str.endswith("(paper)")).all()


def test_write_tables_and_markdown(tmp_path, cfg):
    results = make_fake_run(tmp_path / "run")
    out = tmp_path / "tables"
    written = write_tables(cfg, out, results)
    assert [p.name for p in written] == list(TABLE_FILES.values())
    md = render_markdown(out, "test").read_text()
    assert md.count("\n## Table ") == 6 and "paper_miou" in md
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_markdown_needs_every_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="table1_rho_sweep.csv"):
        render_markdown(tmp_path, "test")


def test_table3_time_difference_when_device_and_size_match(tmp_path, cfg):
    results = make_fake_run(tmp_path)
    speed = pd.read_csv(results / "bench/table3_speed.csv")
    speed["device"], speed["image_size"] = "NVIDIA GeForce GTX TITAN X", 512
    speed.to_csv(results / "bench/table3_speed.csv", index=False)
    table = build_table(3, results, cfg).set_index("method")
    assert table.loc["LC", "diff_ms"] == pytest.approx(12.0 - 65.1)
    assert table.loc["LC", "diff_fps"] == pytest.approx(83.3 - 14.7)
    assert "no time difference" not in table.loc["LC", "note"]


def test_table1_and_lc_fast_name_their_models_per_rho(tmp_path, cfg):
    results = make_fake_run(tmp_path)
    per_rho = {**cfg, "evaluate": {**cfg["evaluate"], "sweep_retrain": True},
               "train": {**cfg["train"], "rho": 0.9}}
    table1 = build_table(1, results, per_rho).set_index("rho")
    assert table1.loc[1.0, "model"] == "runs/voc/dsn"  # LC trained at rho = 1 is DSN
    assert table1.loc[0.9, "model"] == "runs/voc/lc"  # the main LC run, not a duplicate
    assert table1.loc[0.8, "model"] == "runs/voc/lc_rho0.800"
    assert (table1["training"] == "one model per rho (evaluate.sweep_retrain)").all()
    table3 = build_table(3, results, per_rho).set_index("method")
    assert table3.loc["LC (fast)", "model"] == "runs/voc/lc_rho0.800"
    demo = build_table(1, results, cfg)
    assert demo["training"].str.contains("re-thresholded").all()


def test_table2_iterations_and_init_per_row(tmp_path, cfg):
    table = build_table(2, make_fake_run(tmp_path), cfg).set_index("run")
    assert table.loc["irnet", "iterations"] == 30 and table.loc["irnet", "iterations_total"] == 30
    assert table.loc["lc", "iterations"] == 20 and table.loc["lc", "iterations_total"] == 50
    # what each row started from follows train.cascade_init (the test preset: dsn)
    assert cfg["train"]["cascade_init"] == "dsn"
    assert table.loc["lc", "init_from"] == table.loc["dsn_dropout", "init_from"] == "dsn"
    assert table.loc["dsn", "init_from"] == table.loc["mc", "init_from"] == get_variant("dsn").init_from
    # no published protocol for the Model Cascade: no difference, the reading in the note
    assert pd.isna(table.loc["mc", "diff_miou"]) and table.loc["mc", "paper_miou"] == 44.20
    assert "not a failed reproduction" in table.loc["mc", "note"]


def test_multi_scale_protocol_columns(tmp_path, cfg):
    results = make_fake_run(tmp_path)
    ev = json.loads((results / "runs/voc/lc/eval_val_ms.json").read_text())
    ev["protocol"] = {"scales": [0.5, 0.75, 1.0], "flip": False, "crf": False, "fusion": "max"}
    (results / "runs/voc/lc/eval_val_ms.json").write_text(json.dumps(ev))
    table4 = build_table(4, results, cfg).set_index("method")
    row = table4.loc["LC (ours) multi-scale"]
    assert (row["scales"], row["fusion"], row["flip"]) == ("0.5 0.75 1", "max", False)
    assert pd.isna(table4.loc["LC (ours)", "fusion"])  # one view: nothing fused
    table6 = build_table(6, results, cfg)
    ms = table6[(table6["source"] == "reproduced") & (table6["multi_scale"] == "yes")
                & (table6["crf"] == "no")].iloc[0]
    assert (ms["scales"], ms["fusion"]) == ("0.5 0.75 1", "max")
    assert "FPS timed at scales 0.75 1, mIoU at 0.5 0.75 1" in ms["note"]  # bench timed other views


def _markdown_section(md: str, number: int) -> str:
    return md.split(f"## Table {number}:")[1].split("\n## ")[0]


def test_markdown_side_by_side_protocol_in_header_integers(tmp_path, cfg):
    results = make_fake_run(tmp_path / "run")
    out = tmp_path / "tables"
    write_tables(cfg, out, results)
    md = render_markdown(out, "test").read_text()
    table2 = _markdown_section(md, 2)
    header = next(line for line in table2.splitlines() if line.startswith("| method"))
    assert "| miou | paper_miou | diff_miou |" in header
    # protocol constant over the table: above it, not a column
    assert "Same for every row:" in table2 and "preset test" in table2 and "device cpu" in table2
    assert "| preset |" not in header and "| device |" not in header
    assert "eval_file" not in header  # machine columns stay in the CSV
    assert "eval_file" in pd.read_csv(out / TABLE_FILES[2]).columns
    # integers as integers: iterations 30, num_images 4, published stage shares 15, 23
    assert "| 30 |" in table2 and "30.0" not in table2 and "num_images 4" in table2
    table1 = _markdown_section(md, 1)
    assert "| 15 |" in table1 and "15.0" not in table1 and "| 73.91 |" in table1
    assert "\n| 1 | 0 | 0 |" in table1 and "\n| 0.985 |" in table1  # rho as configured
    # notes are numbered footnotes
    assert "Notes:" in table2 and "three independent networks" in table2
    table3 = _markdown_section(md, 3)
    lc_row = next(line for line in table3.splitlines() if line.startswith("| LC |"))
    cells = [c.strip() for c in lc_row.strip("|").split("|")]
    head = [c.strip() for c in next(line for line in table3.splitlines()
                                     if line.startswith("| method")).strip("|").split("|")]
    row = dict(zip(head, cells, strict=True))
    assert row["ms"] == "12" and row["paper_ms"] == "65.10" and row["diff_ms"] == ""
    assert "no time difference: ours cpu at 64 px" in table3
    csv3 = pd.read_csv(out / TABLE_FILES[3])
    assert {"ms_p25", "ms_p75", "device", "image_size"} <= set(csv3.columns)  # the CSV keeps every column
    assert "64.0" not in (out / TABLE_FILES[3]).read_text().split("\n")[1]  # image_size written as 64


def test_markdown_protocol_header_only_when_constant_on_our_rows(tmp_path, cfg):
    results = make_fake_run(tmp_path / "run")
    out = tmp_path / "tables"
    write_tables(cfg, out, results)
    md = render_markdown(out, "test").read_text()
    table4, table6 = _markdown_section(md, 4), _markdown_section(md, 6)
    # fusion differs between our rows (none for one view, mean for several): stays a column
    assert "fusion mean" not in table4 and "| fusion |" in table4
    assert "Same for our rows:" in table4 and "device cpu" in table4
    # backbone is shown for cited rows too: never moved above the table
    assert "| backbone |" in table6 and "backbone IRNet" not in table6
    # one footnote per note, none cut at a comma or semicolon inside it
    assert ("1. mIoU no difference: our number is val, the paper's test (test labels are server-only)"
            in table6)
