"""The GPU run's plan and carry, checked without a GPU: the rows' order and time budget, and the slimmed ray
wheel (a folder dropped, RECORD true to what is left, installable by pip)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))

import slim_wheel  # noqa: E402

import gpu_train  # noqa: E402


def test_rows_run_in_value_order_with_the_7b_row_last():
    rows = gpu_train.default_rows({"flash_attention_3": "-", "flash_attention_2": "-", "eager": "-"})
    assert rows[:3] == ["sdpa/chunked", "flex_attention/chunked", "flex_attention/liger"]
    assert rows[-1] == "7b" and len(rows) == len(set(rows))
    assert not any(r.startswith(("eager", "flash")) for r in rows)


def test_a_row_never_uses_the_time_held_for_the_7b_row():
    caps = {"7b": 200, "*": 80, "compile": 150}
    budget = gpu_train.Budget(300, caps, ["7b"])
    assert gpu_train.cap_of("flex_attention/chunked/compile", caps) == 150
    assert gpu_train.cap_of("sdpa/chunked", caps) == 80
    assert 99 < budget.timeout("flex_attention/chunked/compile") <= 100  # 300 - 200 held back
    assert budget.timeout("7b") == 200
    budget.done("7b")
    assert budget.timeout("sdpa/chunked") == 80
    budget.deadline = time.time() + 10
    assert budget.timeout("sdpa/chunked") <= 10


def _sha(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_slim_wheel_drops_a_folder_and_keeps_an_installable_record(tmp_path):
    files = {
        "toy/__init__.py": b"VALUE = 1\n",
        "toy/jars/big.jar": b"x" * 1000,
        "toy-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: toy\nVersion: 1.0\n",
        "toy-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},{_sha(d)},{len(d)}\n" for n, d in files.items()) + "toy-1.0.dist-info/RECORD,,\n"
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in {**files, "toy-1.0.dist-info/RECORD": record.encode()}.items():
            z.writestr(name, data)

    slim = slim_wheel.slim(wheel, tmp_path / "out", ["toy/jars"])
    with zipfile.ZipFile(slim) as z:
        names = set(z.namelist())
        lines = z.read("toy-1.0.dist-info/RECORD").decode().splitlines()
        assert "toy/jars/big.jar" not in names and "toy/__init__.py" in names
        listed = {line.split(",")[0]: line.split(",")[1] for line in lines}
        assert set(listed) == names
        assert listed["toy/__init__.py"] == _sha(files["toy/__init__.py"])
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(target),
            str(slim),
        ],
        check=True,
    )
    assert (target / "toy" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (target / "toy" / "jars").exists()
