"""Fixtures shared by the Python package's tests: the default model and the happy
control vector (one of each per test module)."""

from pathlib import Path

import pytest

import bipo

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HAPPY = ROOT / "assets" / "happy-control-vector.gguf"


@pytest.fixture(scope="module")
def model():
    assert MODEL.is_file(), f"{MODEL} is missing: run scripts/fetch-model.sh"
    return bipo.Model.load(MODEL)


@pytest.fixture(scope="module")
def happy():
    return bipo.SteeringVector.load(HAPPY)
