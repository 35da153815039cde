"""benchmarks/gpu_install.py: what installing the lock on an offline GPU machine does with every pin.
Runs everywhere (no CUDA needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_install():
    spec = importlib.util.spec_from_file_location("gpu_install", ROOT / "benchmarks" / "gpu_install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_pin_is_kept_installed_from_a_carried_wheel_left_to_the_machine_or_reported(
    gpu_install, tmp_path
):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\nPyYAML==6.0.2\ntorch==2.14.1\nnvidia-cublas==13.1.1.3\npydicom==3.0.1\n"
                    "mlflow==3.17.0\nrich==14.0.0\n")  # fmt: skip
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "pydicom-3.0.1-py3-none-any.whl").touch()
    (tmp_path / "wheels" / "rich-13.0.0-py3-none-any.whl").touch()  # another version: no use
    installed = {"pyyaml": "6.0.2", "torch": "2.11.0", "rich": "13.9.4"}
    plan = gpu_install.plan(
        gpu_install.read_lock(lock), installed, gpu_install.wheel_versions(tmp_path / "wheels")
    )
    assert plan.kept == {"pyyaml": "6.0.2"}
    assert plan.install == {"pydicom": str(tmp_path / "wheels" / "pydicom-3.0.1-py3-none-any.whl")}
    assert plan.machine_own == {"torch": {"lock": "2.14.1", "machine": "2.11.0"},
                                "nvidia-cublas": {"lock": "13.1.1.3", "machine": None}}  # fmt: skip
    assert plan.deviations == {"rich": {"lock": "14.0.0", "installed": "13.9.4"}}
    assert plan.missing == {"mlflow": "3.17.0"}


def test_the_projects_lock_is_all_exact_pins(gpu_install):
    pins = gpu_install.read_lock(ROOT / "requirements.lock")
    assert {"torch", "dvc", "mlflow", "prefect", "pydicom"} <= set(pins)
