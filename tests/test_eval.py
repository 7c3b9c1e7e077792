"""`peftstd eval`: the same metrics and intervals for a run and its export; paired bootstrap comparison."""

from __future__ import annotations

import json

import numpy as np
from conftest import peftstd

from peftstd.evaluation.bootstrap import interval, paired_test


def test_run_and_export_get_the_same_metrics_intervals_and_a_paired_comparison(trained, exported, tmp_path):
    result = peftstd("eval", str(trained["lora"]), "--compare", str(exported), "--resamples", "200", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    run, artifact = report["results"]
    assert run["metrics"].keys() == artifact["metrics"].keys() and run["examples"] == artifact["examples"] == 24
    for r in (run, artifact):
        for name, (low, high) in r["ci95"].items():
            assert low <= r["metrics"][name] <= high
    assert run["metrics"]["accuracy"] == artifact["metrics"]["accuracy"]  # fp32 ONNX: the same predictions
    assert report["comparison"]["accuracy"]["difference"] == 0.0 and report["comparison"]["accuracy"]["p_value"] == 1.0
    assert "paired bootstrap p=" in result.stdout and (tmp_path / "eval.md").is_file()


def test_eval_of_an_int8_artifact_on_another_split(exported, tmp_path):
    result = peftstd("eval", str(exported), "--artifact", "model.int8.onnx", "--split", "validation", "--resamples", "100", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.int8.onnx" in result.stdout and "(n=24)" in result.stdout


def test_eval_refuses_what_it_cannot_evaluate(trained, tmp_path):
    assert peftstd("eval", str(tmp_path)).returncode == 2
    bad = peftstd("eval", str(trained["lora"]), "--artifact", "model.onnx")
    assert bad.returncode == 2 and "--artifact applies to export folders only" in bad.stderr


def test_paired_bootstrap_separates_a_real_difference_from_none():
    correct_a = np.array([1, 0] * 100)  # 50% right
    correct_b = np.ones(200)  # 100% right
    accuracy_a, accuracy_b = (lambda idx: correct_a[idx].mean()), (lambda idx: correct_b[idx].mean())
    clear = paired_test(accuracy_a, accuracy_b, 200, resamples=500)
    assert clear["difference"] == 0.5 and clear["p_value"] < 0.01 and clear["ci95"][0] > 0
    same = paired_test(accuracy_a, accuracy_a, 200, resamples=500)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    low, high = interval(accuracy_a, 200, resamples=500)
    assert low < 0.5 < high


def test_eval_on_another_data_file_uses_all_of_its_rows(trained, tmp_path):
    from conftest import synthetic_rows, write_jsonl

    data = write_jsonl(tmp_path / "other.jsonl", synthetic_rows(30, seed=7))
    result = peftstd("eval", str(trained["lora"]), "--data", str(data), "--resamples", "50", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["results"][0]["examples"] == 30 and report["results"][0]["data"] == str(data)


def test_eval_maps_other_column_names_and_names_them_when_missing(trained, tmp_path):
    from conftest import synthetic_rows, write_jsonl

    rows = [{"sentence": r["text"], "polarity": r["label"]} for r in synthetic_rows(24, seed=3)]
    data = write_jsonl(tmp_path / "renamed.jsonl", rows)
    unmapped = peftstd("eval", str(trained["lora"]), "--data", str(data), "--resamples", "20", "--out", str(tmp_path / "a"))
    assert unmapped.returncode == 2 and "Traceback" not in unmapped.stderr
    assert "'text'" in unmapped.stderr and "'label'" in unmapped.stderr and "['sentence', 'polarity']" in unmapped.stderr
    mapped = peftstd("eval", str(trained["lora"]), "data.text_column=sentence", "data.label_column=polarity", "--data", str(data),
                     "--resamples", "20", "--out", str(tmp_path / "b"))
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["results"][0]["examples"] == 24
    wrong = peftstd("eval", str(trained["lora"]), "lora.rank=4", "--data", str(data))
    assert wrong.returncode == 2 and "data.* overrides only" in wrong.stderr


def test_ensemble_averages_member_probabilities_and_is_evaluated_like_a_run(trained, exported, tmp_path):
    members = [trained["lora"], trained["adapter"], exported]
    result = peftstd("ensemble", *map(str, members), "--resamples", "100", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "ensemble.json").read_text())
    assert len(report["member_results"]) == 3 and report["examples"] == 24
    low, high = report["ci95"]["accuracy"]
    assert low <= report["metrics"]["accuracy"] <= high
    logits = [np.array([json.loads(line)["logits"] for line in (run / "predictions" / "test.jsonl").read_text().splitlines()])
              for run in (trained["lora"], trained["adapter"], trained["lora"])]  # the fp32 export predicts like its run
    expected = np.mean([np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in logits], axis=0)
    written = np.array([json.loads(line)["probabilities"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()])
    np.testing.assert_allclose(written, expected, atol=1e-4)
    assert "ensemble of 3" in (tmp_path / "eval.md").read_text()


def test_ensemble_refuses_a_single_member(trained, tmp_path):
    result = peftstd("ensemble", str(trained["lora"]), "--out", str(tmp_path / "one"))
    assert result.returncode == 2 and "at least 2 members" in result.stderr and len(result.stderr.strip().splitlines()) == 1
