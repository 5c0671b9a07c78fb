"""The evaluation CLI, run as a user would: in a subprocess, and its errors through the same ``main``."""

import json
import os
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mgrpo_ref.evaluate", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "report.json"
    proc = run("--main", "oracle", "--sub", "teacher", "--limit", "40", "--out", str(out), "--show", "1")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy (exact)" in proc.stdout and "<question>" in proc.stdout
    report = json.loads(out.read_text())
    for key in ("accuracy", "format_valid", "mean_sub_calls", "accuracy_by_hops"):
        assert key in report
    assert report["n"] == 40 and report["mode"] == "multi"


def test_cli_single_agent(tmp_path):
    out = tmp_path / "single.json"
    proc = run("--single", "oracle", "--split", "train", "--limit", "20", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["accuracy"] == 1.0 and report["mean_sub_calls"] == 0


def test_cli_errors_are_clear(capsys):
    """Each bad invocation is argparse's one ``error:`` line and exit status 2 (in this
    process: the same ``main`` the command runs, without a Python start-up per case)."""
    from mgrpo_ref.evaluate import main

    def error(*args):
        with pytest.raises(SystemExit) as stop:
            main(list(args))
        assert stop.value.code == 2
        return capsys.readouterr().err

    assert "--main needs --sub" in error("--main", "oracle")
    assert "unknown agent 'wizard'" in error("--main", "wizard", "--sub", "oracle")
    assert "no split 'nope'" in error("--single", "oracle", "--split", "nope")
    # a few-shot prompt is rendered in a chat template: not for the scripted agents, nor our base
    assert "not the scripted teacher" in error("--single", "teacher", "--shots", "2")
    assert "needs a model with a chat template; data/base has none" in error("--single", "data/base", "--shots", "2",
                                                                               "--limit", "1")
    # a hub-style name goes to from_pretrained; offline and absent, it is a clear error (in a
    # subprocess: the hub library reads HF_HUB_OFFLINE when it is first imported)
    proc = run("--single", "nobody/no-such-model", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "cannot load agent 'nobody/no-such-model'" in proc.stderr


@pytest.mark.parametrize("temperature", ["0", "1"])
@pytest.mark.parametrize("agents", ["main+sub", "single"])
def test_committed_base_meets_the_targets(agents, temperature):
    """The base model issue's targets, measured as the README's command measures them (the
    240 held-out questions of six worlds, one batch, seed 0): end-to-end accuracy in
    [20%, 60%] and format validity of every role >= 90%, greedy and at T = 1."""
    from mgrpo_ref.evaluate import main
    from mgrpo_ref.policy import REPO_ROOT

    base = str(REPO_ROOT / "data/base")
    who = ["--main", base, "--sub", base] if agents == "main+sub" else ["--single", base]
    report = main([*who, "--temperature", temperature, "--batch-size", "240"])
    assert report["n"] == 240 and len(report["accuracy_by_world"]) == 6
    assert 0.2 <= report["accuracy"] <= 0.6, report["accuracy"]
    assert report["format_valid"] >= 0.9
    if agents == "main+sub":  # the base delegates, so the sub-agent's format is measured
        assert report["sub_format_valid"] is not None and report["sub_format_valid"] >= 0.9
