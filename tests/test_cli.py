"""The `asd` console command: evaluate, index, check-submission (in-process, real code paths)."""

import json
import zipfile

import pytest

from asd.cli import main
from conftest import SHARED

EVALUATOR = SHARED / "conformance" / "evaluator"
needs_shared = pytest.mark.skipif(not EVALUATOR.exists(), reason=f"{EVALUATOR} not found (set ASD_SHARED)")


@needs_shared
def test_evaluate_prints_table_and_writes_official_score(tmp_path, capsys):
    expected = json.loads((EVALUATOR / "expected.json").read_text())["systems"]["sys2_informative"]
    out = tmp_path / "result.json"
    code = main(["evaluate", str(EVALUATOR / "teams" / "team_conformance" / "sys2_informative"),
                 "--ground-truth", str(EVALUATOR), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert result["official_score"] == pytest.approx(expected["official_score"], abs=1e-12)
    assert f"official score: {100 * expected['official_score']:.2f} %" in printed
    assert "ToyCircuit" in printed and len(result["machines"]) == 9


@needs_shared
def test_evaluate_refuses_missing_ground_truth_machine(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path), "--ground-truth", str(EVALUATOR)])
    assert code == 1
    assert "lacks 18 result file(s)" in capsys.readouterr().err


@needs_shared
def test_index_real_dcase_clips_and_refuse_old_names(tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert main(["index", str(SHARED / "real-audio" / "dcase2023-dev-samples"), "--out", str(out)]) == 0
    assert "28 clips in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 29
    assert main(["index", str(SHARED / "real-audio" / "other-formats")]) == 1
    assert "error:" in capsys.readouterr().err


def test_check_submission_lists_problems(tmp_path, capsys):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Bad_Label/anomaly_score_fan_section_00_test.csv", "section_00_0000.wav,nan\n")
    assert main(["check-submission", str(archive)]) == 1
    printed = capsys.readouterr().out
    assert "is NOT a valid submission" in printed and printed.count("  - ") >= 2
