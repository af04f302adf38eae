"""benchmarks/study_verdict.py: the pre-registered verdict rule, merging runs without losing any, the tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_verdict.py"


@pytest.fixture(scope="module")
def sv():
    return load_benchmark("study_verdict")


def test_verdict_rule(sv):
    base = {1: 10.0, 2: 10.5, 3: 11.0}  # sd 0.5
    assert sv.verdict({1: 12.0, 2: 12.5, 3: 13.0}, base, 1.0)["verdict"] == "helps"  # +2.0 >= max(1, 2 x 0.5)
    assert sv.verdict({1: 8.0, 2: 8.5, 3: 9.0}, base, 1.0)["verdict"] == "hurts"
    assert sv.verdict({1: 10.8, 2: 11.3, 3: 11.8}, base, 1.0)["verdict"] == "no measurable effect"  # +0.8 < 1.0
    # a large mean difference carried by one seed: beats the base in 1 of 3 pairs only
    one_seed = sv.verdict({1: 20.0, 2: 10.4, 3: 10.9}, base, 1.0)
    assert one_seed["verdict"] == "no measurable effect" and one_seed["wins"] == 1
    # noisy rows: the margin is 2 x the pooled sd, not the floor
    noisy = sv.verdict({1: 9.0, 2: 13.0, 3: 17.0}, {1: 8.0, 2: 11.0, 3: 14.0}, 1.0)
    assert noisy["margin"] == pytest.approx(2 * ((16 + 9) / 2) ** 0.5) and noisy["verdict"] == "no measurable effect"
    assert sv.verdict({1: 12.0, 2: 12.5}, base, 1.0)["verdict"] == "pending (2 of 3 seeds)"


def test_a_study_may_need_two_seeds_and_then_both_must_agree(sv):
    base = {1: 10.0, 2: 11.0}  # sd 0.71
    assert sv.verdict({1: 7.0, 2: 8.0}, base, 1.0, needed=2)["verdict"] == "hurts"  # -3.0, margin max(1, 1.41)
    split = sv.verdict({1: 5.0, 2: 11.5}, base, 1.0, needed=2)  # -2.25 on the mean, but one of the two seeds better
    assert split["verdict"] == "no measurable effect" and split["losses"] == 1
    assert sv.verdict({1: 7.0}, base, 1.0, needed=2)["verdict"] == "pending (1 of 2 seeds)"
    study = {"rows": [{"name": "b", "set_name": "S"}, {"name": "g", "set_name": "S"}],
             "verdict": {"base": {"S": "b"}, "seeds_needed": 2}}
    runs = {f"{row}/seed{s}": {"row": row, "seed": s, "commit": "c", "mAP": v, "top1": v, "label_ari": 0.3, "curve": {}}
            for row, values in (("b", base), ("g", {1: 7.0, 2: 8.0})) for s, v in values.items()}
    rows = sv.aggregate({"runs": runs}, study)
    assert rows["g"]["verdict"]["mAP"]["verdict"] == "hurts"
    assert "**hurts** (-3.0, margin 1.4, 0/2 seeds better)" in sv.markdown(rows, {"runs": runs})


def write_run(folder: Path, epochs: int, maps: list[float], start: float = 2.0) -> None:
    folder.mkdir(parents=True)
    history = [{"epoch": e, "label_ari": 0.3, "single_camera_share": 0.9, "seconds_per_step": 0.5,
                **({"mAP": maps[e - 1], "top1": maps[e - 1] / 2, "top5": maps[e - 1]} if e % 2 == 0 else {})}
               for e in range(1, epochs + 1)]
    (folder / "metrics.json").write_text(json.dumps(history))
    (folder / "start_scores.json").write_text(json.dumps({"epoch": 0, "mAP": start, "top1": 1.0}))


def test_merge_keeps_runs_refuses_another_commit_and_fills_the_readme_block(sv, tmp_path):
    study = tmp_path / "toy" / "study.yaml"
    study.parent.mkdir()
    study.write_text("budget: {epochs: 4, iters: 10}\nverdict: {base: {A: base}, floors: {mAP: 1.0, top1: 1.0, label_ari: 0.01}}\n"
                     "rows:\n  - {name: base, set_name: A, seeds: [1, 2, 3]}\n  - {name: gen, set_name: A, seeds: [1, 2, 3]}\n")
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        write_run(runs / "runs" / "base" / f"seed{seed}", 4, [0, 5.0, 0, 10.0 + seed / 10])
    write_run(runs / "runs" / "gen" / "seed1", 4, [0, 6.0, 0, 13.0])
    write_run(runs / "runs" / "gen" / "seed2", 3, [0, 6.0, 0])  # unfinished
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- study:toy:begin -->\nold\n<!-- study:toy:end -->\noutro\n")

    def call(*extra: str) -> int:
        return sv.main(["--study", str(study), *extra])

    assert call("--runs", str(runs), "--commit", "a" * 40, "--readme", str(readme)) == 0
    results = json.loads((study.parent / "results.json").read_text())
    assert sorted(results["runs"]) == ["base/seed1", "base/seed2", "base/seed3", "gen/seed1"]
    assert results["in_flight"] == ["gen/seed2 (epoch 3/4)"]
    assert results["runs"]["gen/seed1"]["curve"] == {"0": 2.0, "2": 6.0, "4": 13.0}
    assert results["rows"]["gen"]["verdict"]["mAP"]["verdict"] == "pending (1 of 3 seeds)"
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "| gen | A | 1 |" in text
    assert (study.parent / "curves.png").stat().st_size > 0
    # the runs folder of another session is gone: the committed results keep what was merged
    write_run(tmp_path / "later" / "runs" / "gen" / "seed3", 4, [0, 6.0, 0, 14.0])
    assert call("--runs", str(tmp_path / "later"), "--commit", "a" * 40) == 0
    assert len(json.loads((study.parent / "results.json").read_text())["runs"]) == 5
    # the same run from other code is refused, not mixed in
    clash = subprocess.run([sys.executable, str(SCRIPT), "--study", str(study), "--runs", str(runs), "--commit", "b" * 40],
                           capture_output=True, text=True)  # through the command line: one clean line
    assert clash.returncode == 2 and "from one commit" in clash.stderr and "Traceback" not in clash.stderr
    assert call("--render-only") == 0
    # a stand-in copied from another study names its own commit; a malformed one is refused in one line
    stand_in = tmp_path / "copied" / "runs" / "gen" / "seed3"
    write_run(stand_in, 4, [0, 6.0, 0, 14.0])
    (stand_in / "commit.txt").write_text("c" * 40 + "\n")
    clash = subprocess.run([sys.executable, str(SCRIPT), "--study", str(study), "--runs", str(tmp_path / "copied"),
                            "--commit", "a" * 40], capture_output=True, text=True)
    assert clash.returncode == 2 and "says cccccccccc: a row's runs come from one commit" in clash.stderr
    del_results = json.loads((study.parent / "results.json").read_text())
    del del_results["runs"]["gen/seed3"]
    (study.parent / "results.json").write_text(json.dumps(del_results))
    assert call("--runs", str(tmp_path / "copied"), "--commit", "a" * 40) == 0
    assert json.loads((study.parent / "results.json").read_text())["runs"]["gen/seed3"]["commit"] == "c" * 40
    (stand_in / "commit.txt").write_text("not a hash")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--study", str(study), "--runs", str(tmp_path / "copied"),
                          "--commit", "a" * 40], capture_output=True, text=True)
    assert bad.returncode == 2 and "must hold one full 40-digit commit hash" in bad.stderr


def test_a_study_may_show_more_columns_and_a_later_merge_fills_them_in(sv, tmp_path):
    """``columns``: start mAP / top-1, clusters, largest cluster, s / epoch in the rows table; a run merged before
    those figures existed gets them from the same run folder, its other figures untouched; unknown names refused."""
    study = tmp_path / "cols" / "study.yaml"
    study.parent.mkdir()
    rows = "rows:\n  - {name: base, set_name: A, seeds: [1, 2]}\n"
    study.write_text("budget: {epochs: 2, iters: 10}\ncolumns: [start_mAP, clusters, largest_cluster, seconds_per_epoch]\n"
                     + rows)
    runs = tmp_path / "runs"
    for seed, (clusters, largest, seconds) in {1: (40, 9, 100.0), 2: (50, 13, 140.0)}.items():
        folder = runs / "runs" / "base" / f"seed{seed}"
        write_run(folder, 2, [0, 5.0 + seed], start=2.0 + seed)
        history = json.loads((folder / "metrics.json").read_text())
        for row in history:
            row.update(clusters=clusters, cluster_sizes={"size_max": largest}, seconds=seconds)
        (folder / "metrics.json").write_text(json.dumps(history))
    # seed 1 as an older merge recorded it: without the new figures, and with an mAP the folder no longer says
    old = sv.run_summary(runs / "runs" / "base" / "seed1", 2)
    for field in ("largest_cluster", "seconds_per_epoch"):
        del old[field]
    old["mAP"] = 99.0
    (study.parent / "results.json").write_text(json.dumps({"runs": {"base/seed1": {"row": "base", "seed": 1,
                                                                                  "commit": "a" * 40, **old}}}))
    assert sv.main(["--study", str(study), "--runs", str(runs), "--commit", "a" * 40]) == 0
    merged = json.loads((study.parent / "results.json").read_text())["runs"]
    assert merged["base/seed1"]["largest_cluster"] == 9 and merged["base/seed1"]["seconds_per_epoch"] == 100.0
    assert merged["base/seed1"]["mAP"] == 99.0  # filled in, nothing replaced
    table = (study.parent / "results.md").read_text()
    assert "| start mAP | clusters | largest cluster | s / epoch |" in table
    assert "| 3.5 ± 0.7 | 45 ± 7 | 11 ± 3 | 120 ± 28 |" in table
    study.write_text("budget: {epochs: 2, iters: 10}\ncolumns: [clusters, speed]\n" + rows)
    assert sv.main(["--study", str(study), "--render-only"]) == 2


def test_a_part_on_other_data_has_its_own_results_tables_and_block(sv, tmp_path):
    """``--part k4``: the same rows on another data set merge into results_k4.json (never into results.json, whose
    keys are the same row/seed names), with results_k4.md, curves_k4.png and the README block <study>_k4."""
    study = tmp_path / "toy" / "study.yaml"
    study.parent.mkdir()
    study.write_text("budget: {epochs: 2, iters: 10}\nrows:\n  - {name: base, set_name: A, seeds: [1]}\n")
    full, k4 = tmp_path / "full", tmp_path / "k4"
    write_run(full / "runs" / "base" / "seed1", 2, [0, 9.0])
    write_run(k4 / "runs" / "base" / "seed1", 2, [0, 3.0])
    readme = tmp_path / "README.md"
    readme.write_text("<!-- study:toy:begin -->\n<!-- study:toy:end -->\n<!-- study:toy_k4:begin -->\n<!-- study:toy_k4:end -->\n")
    assert sv.main(["--study", str(study), "--runs", str(full), "--commit", "a" * 40, "--readme", str(readme)]) == 0
    assert sv.main(["--study", str(study), "--runs", str(k4), "--commit", "b" * 40, "--part", "k4",
                    "--readme", str(readme)]) == 0
    assert json.loads((study.parent / "results.json").read_text())["runs"]["base/seed1"]["mAP"] == 9.0
    assert json.loads((study.parent / "results_k4.json").read_text())["runs"]["base/seed1"]["mAP"] == 3.0
    assert (study.parent / "results_k4.md").is_file() and (study.parent / "curves_k4.png").stat().st_size > 0
    full_block, k4_block = readme.read_text().split("<!-- study:toy_k4:begin -->")
    assert "| 9.0 |" in full_block and "| 3.0 |" in k4_block and "from toy/results_k4.json" in k4_block
    with pytest.raises(SystemExit):
        sv.main(["--study", str(study), "--render-only", "--part", "../x"])
