"""benchmarks/warning_calibration.py: harm, the signals' maxima and the confusion counts on hand-made runs."""

import json
import shutil

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def wc():
    return load_benchmark("warning_calibration")


def write_run(folder, start_map, rows, start_file=True):
    folder.mkdir(parents=True)
    history = []
    for epoch, (mAP, ari, share, outliers) in enumerate(rows, 1):
        row = {"epoch": epoch, "label_ari": ari, "single_camera_share": share, "large_cluster_share": 0.0,
               "cluster_sizes": {"outlier_fraction": outliers}, "collapse_warning": share > 0.9}
        if mAP is not None:
            row["mAP"] = mAP
        history.append(row)
    if start_file:
        (folder / "start_scores.json").write_text(json.dumps({"epoch": 0, "mAP": start_map}))
    else:
        history.insert(0, {"epoch": 0, "mAP": start_map})
    (folder / "metrics.json").write_text(json.dumps(history))


@pytest.fixture
def runs(tmp_path):
    # healthy with one-camera clusters; harmed (below start) with one-camera clusters; harmed (ARI fell) without
    write_run(tmp_path / "a/healthy", 3.0, [(None, 0.05, 0.99, 0.9), (5.0, 0.20, 0.98, 0.1), (None, 0.3, 0.98, 0.1)])
    write_run(tmp_path / "a/below", 3.0, [(None, 0.05, 0.95, 0.9), (2.0, 0.06, 0.96, 0.7), (None, 0.07, 0.5, 0.7)])
    write_run(tmp_path / "b/ari", 3.0, [(4.0, 0.10, 0.20, 0.9), (4.5, 0.08, 0.30, 0.6)], start_file=False)
    shutil.copytree(tmp_path / "a/healthy", tmp_path / "b/copy_of_healthy")  # read once
    (tmp_path / "b/not_a_run").mkdir(parents=True)
    (tmp_path / "b/not_a_run/metrics.json").write_text("[]")
    return tmp_path


def test_harm_maxima_and_in_flight_from_the_run_files(wc, runs):
    judged = {r["run"].split("/")[-1]: r for r in wc.find_runs([str(runs)], epochs=3)}
    assert sorted(judged) == ["ari", "below", "healthy"]  # the empty history is no run
    assert not judged["healthy"]["harmed"] and not judged["healthy"]["in_flight"]
    assert judged["below"]["below_start"] and not judged["below"]["ari_fell"] and judged["below"]["harmed"]
    assert judged["ari"]["ari_fell"] and not judged["ari"]["below_start"] and judged["ari"]["in_flight"]
    assert judged["ari"]["start_mAP"] == 3.0  # the history's epoch 0 stands in for start_scores.json
    assert judged["below"]["max"] == {"single_camera_share": 0.96, "large_cluster_share": 0.0, "outlier_fraction": 0.9}
    later = {r["run"].split("/")[-1]: r for r in wc.find_runs([str(runs)], epochs=3, from_epoch=2)}
    assert later["below"]["max"]["outlier_fraction"] == 0.7 and later["healthy"]["max"]["single_camera_share"] == 0.98


def test_confusion_counts_and_what_separates(wc, runs):
    judged = wc.find_runs([str(runs)], epochs=3)
    assert wc.confusion(judged, "single_camera_share", 0.9) == {"fired_harmed": 1, "false_alarm": 1, "missed": 1,
                                                                "silent_healthy": 0}
    assert wc.confusion(judged, "single_camera_share", 0.99) == {"fired_harmed": 0, "false_alarm": 0, "missed": 2,
                                                                 "silent_healthy": 1}
    table = {(t["signal"], t["threshold"]): t for t in wc.calibrate(judged)}
    assert not any(t["separates"] for t in table.values() if t["signal"] == "single_camera_share")
    # outliers from epoch 2 on: 0.7 / 0.6 in the harmed runs, 0.1 in the healthy one
    late = wc.calibrate(wc.find_runs([str(runs)], epochs=3, from_epoch=2))
    assert {(t["signal"], t["threshold"]) for t in late if t["separates"]} == {("outlier_fraction", 0.2),
                                                                              ("outlier_fraction", 0.3),
                                                                              ("outlier_fraction", 0.5)}


def test_the_script_writes_its_table_and_refuses_a_missing_folder(wc, runs, tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert wc.main(["--runs", str(runs), "--epochs", "3", "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert len(payload["runs"]) == 3 and payload["from_epoch"] == 1 and "machine" in payload
    assert "| single_camera_share | 0.9 | 1 | 1 | 1 | 0 | no |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        wc.main(["--runs", str(tmp_path / "nowhere")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert wc.main(["--runs", str(empty)]) == 1
