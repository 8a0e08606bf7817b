"""The overhead suite: its tiny configuration end to end, and its errors (no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlm_kernel.bench.overhead import main
from rlm_kernel.bench.overhead.plan import PARTS
from rlm_kernel.bench.overhead.report import COLUMNS

COMMAND = [sys.executable, "-m", "rlm_kernel.bench.overhead"]


@pytest.mark.slow
def test_quick_run_prints_every_figure_beside_its_floor(tmp_path):
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [*COMMAND, "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    data = json.loads(out.read_text())
    figures = data["figures"]
    keys = [f["key"] for f in figures]
    # One figure at least from every part, each once.
    for key in ("per_step", "notebook_growth", "subcall", "kernel_memory", "startup", "children"):
        assert key in keys
    assert any(k.startswith("batched_") for k in keys)
    assert {"context_1mb", "context_4mb", "context_linear"} <= set(keys)
    assert len(keys) == len(set(keys))
    for f in figures:
        assert f["ours"] > 0 and f["floor"] > 0, f
        assert f["floor_name"], f
        assert f["vs_floor"] == pytest.approx(f["ours"] / f["floor"], rel=1e-3)
        assert f["rlms"] is None and f["vs_rlms"] is None  # not compared without --compare
    # Targets relative to rlms are open without it; absolute ones are settled.
    by_key = {f["key"]: f for f in figures}
    assert by_key["per_step"]["ok"] is None and by_key["subcall"]["ok"] is None
    assert isinstance(by_key["kernel_memory"]["ok"], bool)
    assert data["rlms"] is None and data["plan"]["parts"] == list(PARTS)

    # The table on stdout: the header, a rule, then one line per figure with its floor.
    lines = done.stdout.strip().splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == list(COLUMNS)
    body = lines[2:]
    assert len(body) == len(figures)
    for line, f in zip(body, figures, strict=True):
        cells = [c.strip() for c in line.split(" | ")]
        assert cells[0] == f["name"]
        assert f["floor_name"] in cells[2]
        assert cells[-1] in ("PASS", "MISS", "info")


def test_compare_rlms_without_an_interpreter_is_a_one_line_error(tmp_path, capsys):
    venv = tmp_path / "rlms-venv"
    code = main(
        [
            "--quick",
            "--quiet",
            "--compare",
            "rlms",
            "--rlms-venv",
            str(venv),
            "--rlms-python",
            "/no/python3",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "rlms environment" in err and "/no/python3" in err
    assert not venv.exists()


def test_compare_rlms_with_an_interpreter_that_cannot_make_a_venv(tmp_path, capsys):
    venv = tmp_path / "rlms-venv"
    # `false` exists but fails: the environment cannot be created, nothing half-built is left.
    code = main(
        [
            "--quick",
            "--quiet",
            "--compare",
            "rlms",
            "--rlms-venv",
            str(venv),
            "--rlms-python",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cannot create a virtual environment" in err
    assert not venv.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sizes", "1,x"], "--sizes"),
        (["--only", "steps,nope"], "'nope'"),
        (["--compare", "other"], "invalid choice"),
        (["--quick", "--full"], "not allowed"),
    ],
)
def test_bad_options_are_one_line_errors(args, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        code = main(args)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
