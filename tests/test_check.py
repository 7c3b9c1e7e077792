"""`peftstd check`: a finished run and its export verify; any changed byte of a recorded file fails, named."""

from __future__ import annotations

import shutil

import pytest
from conftest import peftstd


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_check_passes_on_a_run_and_its_export(trained, exported):
    for folder in (trained["lora"], exported):
        result = peftstd("check", str(folder))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().splitlines()[-1].endswith(" 0 failed")


@pytest.mark.parametrize("relative", ["adapter/adapter_model.safetensors", "metrics.json", "predictions/test.jsonl", "labels.json"])
def test_check_fails_and_names_a_changed_run_file(trained, tmp_path, relative):
    run = tmp_path / "run"
    shutil.copytree(trained["lora"], run)
    flip_last_byte(run / relative)
    result = peftstd("check", str(run))
    assert result.returncode == 1
    assert "FAIL sha256 of" in result.stdout and f"{relative} (changed)" in result.stdout


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx", "tokenizer.json"])
def test_check_fails_and_names_a_changed_export_file(exported, tmp_path, name):
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    flip_last_byte(folder / name)
    result = peftstd("check", str(folder))
    assert result.returncode == 1 and f"{name} (changed)" in result.stdout


def test_check_refuses_a_folder_that_is_neither(tmp_path):
    result = peftstd("check", str(tmp_path))
    assert result.returncode == 1 and "neither a finished run" in result.stdout
