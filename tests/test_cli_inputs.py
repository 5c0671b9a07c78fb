"""Bad input to the command lines: one ``error:`` line, exit status 2, no traceback, nothing written.

Most cases call a CLI's ``main([...])`` in this process (argparse exits with status 2); a few of
each CLI run the real command in a subprocess, as a user would.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mgrpo_ref import cli, compare, evaluate, getmodel, pretrain, sft, train, viewer, world


def run_cli(module, *args, cwd=None, env=None):
    """Run ``python -m mgrpo_ref.<module> args...``."""
    return subprocess.run([sys.executable, "-m", f"mgrpo_ref.{module}", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def assert_refused(code, err, module):
    """Exit status 2 and, on stderr, no traceback and exactly one error line, the last one:
    argparse's ``python -m mgrpo_ref.<module>: error: ...`` (after its usage lines)."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"python -m mgrpo_ref.{module}: error: "), err
    assert err.rstrip().endswith(errors[0]), err
    return errors[0]


def refused_in_process(main, args, capsys, module):
    """Call a CLI's ``main(args)``, which must refuse them; returns its error line."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return assert_refused(exit_.value.code, capsys.readouterr().err, module)


@pytest.fixture
def tree(tmp_path):
    """A folder holding one regular file, ``file``: an --out under it cannot be written."""
    (tmp_path / "file").write_text("not a directory\n")
    return tmp_path


def contents(path):
    """Everything under ``path``, relative to it."""
    return sorted(p.relative_to(path) for p in path.rglob("*"))


ONLY_THE_FILE = [Path("file")]
"""What ``tree`` holds when a command has written nothing."""


# -- the shared argument types ------------------------------------------------------------


@pytest.mark.parametrize("kind, good, bad", [
    (cli.positive_int, {"1": 1, "64": 64}, ["0", "-198", "1.5", "x", ""]),
    (cli.nonnegative_int, {"0": 0, "7": 7}, ["-1", "nan", "2.0"]),
    (cli.finite_float, {"-2.5": -2.5, "0": 0.0}, ["nan", "inf", "-inf", "x"]),
    (cli.nonnegative_float, {"0": 0.0, "1.5": 1.5}, ["-0.1", "nan", "inf", "-inf", "x"]),
    (cli.positive_fraction, {"1": 1.0, "0.9": 0.9}, ["0", "1.5", "nan", "-1"]),
])
def test_argument_types_accept_what_makes_sense_and_refuse_the_rest(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            kind(text)


def test_output_paths_are_checked_without_creating_anything(tree):
    assert cli.output_file(str(tree / "new" / "deeper" / "report.json")) == tree / "new" / "deeper" / "report.json"
    assert cli.output_file(str(tree / "file")) == tree / "file"  # an existing file is overwritten
    assert cli.output_dir(str(tree / "new")) == tree / "new"
    assert cli.output_dir(str(tree)) == tree
    for check, path, why in [(cli.output_file, tree / "file" / "x.json", "is a file, not a directory"),
                             (cli.output_file, tree, "is a directory, not a file"),
                             (cli.output_dir, tree / "file", "is a file, not a directory"),
                             (cli.output_dir, tree / "file" / "a" / "b", "is a file, not a directory")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            check(str(path))
    assert contents(tree) == ONLY_THE_FILE


def test_one_line_joins_a_library_message():
    assert cli.one_line("We couldn't connect.\nCheck your internet connection.") == \
        "We couldn't connect. Check your internet connection."


# -- python -m mgrpo_ref.evaluate -----------------------------------------------------------

EVALUATE_BAD = [
    (["--limit", "0"], "--limit"),
    (["--limit", "-198"], "--limit"),
    (["--batch-size", "0"], "--batch-size"),
    (["--split", "../worlds/world_1"], "a split is a name"),
    (["--split", "eval/../train"], "a split is a name"),
    (["--noise", "nan"], "--noise"),
    (["--noise", "inf"], "--noise"),
    (["--noise", "-1"], "--noise"),
    (["--show", "-1"], "--show"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("args, named", EVALUATE_BAD, ids=[" ".join(a) for a, _ in EVALUATE_BAD])
def test_evaluate_refuses_bad_options(args, named, tree, capsys):
    out = tree / "report.json"
    line = refused_in_process(evaluate.main, ["--single", "oracle", *args, "--out", out], capsys, "evaluate")
    assert named in line
    assert not out.exists()


def test_evaluate_refuses_an_out_it_cannot_write(tree, capsys):
    line = refused_in_process(evaluate.main, ["--single", "oracle", "--out", tree / "file" / "r.json"],
                              capsys, "evaluate")
    assert "is a file, not a directory" in line
    line = refused_in_process(evaluate.main, ["--single", "oracle", "--out", tree], capsys, "evaluate")
    assert "is a directory, not a file" in line
    assert contents(tree) == ONLY_THE_FILE


def test_evaluate_refuses_an_empty_split(tmp_path, capsys):
    (tmp_path / "questions").mkdir()
    (tmp_path / "questions" / "empty.jsonl").write_text("")
    line = refused_in_process(evaluate.main, ["--single", "oracle", "--split", "empty", "--data-dir", tmp_path],
                              capsys, "evaluate")
    assert "has no questions" in line


@pytest.mark.parametrize("args", [
    ["--limit", "-198"],  # once ran two questions (questions[:-198])
    ["--split", "../worlds/world_1"],  # once read a world file as questions: a KeyError traceback
    ["--noise", "nan", "--show", "-1"],
    ["--out", "{tree}/file/report.json"],  # once a FileExistsError traceback after the whole run
], ids=["negative limit", "split as a path", "nan noise", "out under a file"])
def test_the_evaluate_command_refuses_in_one_line(args, tree):
    args = [a.format(tree=tree) for a in args]
    if "--out" not in args:
        args += ["--out", tree / "report.json"]
    proc = run_cli("evaluate", "--single", "oracle", *args)
    assert_refused(proc.returncode, proc.stderr, "evaluate")
    assert proc.stdout == ""
    assert contents(tree) == ONLY_THE_FILE


def test_a_split_is_a_name_not_a_path():
    for split in ("../worlds/world_1", "/etc/passwd", "a/b", "..", ".hidden", "", "eval.jsonl"):
        with pytest.raises(ValueError, match="a split is a name"):
            world.load_questions(split)
    with pytest.raises(FileNotFoundError, match="no split 'nope'"):
        world.load_questions("nope")
    assert len(world.load_questions("eval")) == 200


# -- python -m mgrpo_ref.pretrain -----------------------------------------------------------

PRETRAIN_BAD = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"),
    (["--seed", "-1"], "--seed"),
    (["--demo-noise", "nan"], "--demo-noise"),
    (["--demo-noise", "-0.1"], "demo_noise"),  # the range is PretrainConfig's check
    (["--demo-misread", "-1"], "demo_misread"),
    (["--demo-hasty", "inf"], "--demo-hasty"),
    (["--large-worlds", "1.5"], "large_worlds"),
    (["--large-worlds", "nan"], "--large-worlds"),
    (["--size", "huge"], "--size"),
]


@pytest.mark.parametrize("args, named", PRETRAIN_BAD, ids=[" ".join(a) for a, _ in PRETRAIN_BAD])
def test_pretrain_refuses_bad_options(args, named, tree, capsys):
    out = tree / "base"
    line = refused_in_process(pretrain.main, [*args, "--out", out], capsys, "pretrain")
    assert named in line
    assert not out.exists()


def test_the_pretrain_command_refuses_in_one_line(tree):
    proc = run_cli("pretrain", "--size", "tiny", "--out", tree / "file" / "base")
    assert "is a file, not a directory" in assert_refused(proc.returncode, proc.stderr, "pretrain")
    proc = run_cli("pretrain", "--size", "tiny", "--demo-noise", "nan", "--out", tree / "base")
    assert "--demo-noise" in assert_refused(proc.returncode, proc.stderr, "pretrain")
    assert contents(tree) == ONLY_THE_FILE


# -- python -m mgrpo_ref.world --------------------------------------------------------------


def test_world_refuses_an_out_it_cannot_write(tree, capsys):
    for out in (tree / "file", tree / "file" / "data"):
        assert "is a file, not a directory" in refused_in_process(world.main, ["--out", out], capsys, "world")
    assert contents(tree) == ONLY_THE_FILE


def test_the_world_command_refuses_in_one_line(tree):
    proc = run_cli("world", "--out", tree / "file" / "data")
    assert "is a file, not a directory" in assert_refused(proc.returncode, proc.stderr, "world")
    assert contents(tree) == ONLY_THE_FILE


# -- python -m mgrpo_ref.compare ------------------------------------------------------------

COMPARE_BAD = [
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "0", "-2"], "--seeds"),
    (["--preset", "nope"], "--preset"),
    (["--variants", "nope"], "--variants"),
    (["lr=nan"], "lr"),
    (["nosuch=1"], "nosuch"),
    (["steps"], "key=value"),
    (["eval_sampled_temperature=0"], "eval_sampled_temperature"),
    (["base=data/no_such_model"], "no model directory at data/no_such_model"),
]


@pytest.mark.parametrize("args, named", COMPARE_BAD, ids=[" ".join(a) for a, _ in COMPARE_BAD])
def test_compare_refuses_bad_input(args, named, tree, capsys):
    runs, out = tree / "runs", tree / "out"
    line = refused_in_process(compare.main, ["--preset", "smoke", "--runs", runs, "--out", out, *args],
                              capsys, "compare")
    assert named in line
    assert not runs.exists() and not out.exists()


def test_compare_refuses_directories_it_cannot_write(tree, capsys):
    for flag in ("--out", "--runs"):
        line = refused_in_process(compare.main, ["--preset", "smoke", flag, tree / "file" / "x"], capsys, "compare")
        assert flag in line and "is a file, not a directory" in line
    assert contents(tree) == ONLY_THE_FILE


def test_the_compare_command_refuses_in_one_line(tree):
    proc = run_cli("compare", "--preset", "smoke", "--runs", tree / "runs", "--out", tree / "out", "lr=nan")
    assert "lr" in assert_refused(proc.returncode, proc.stderr, "compare")
    proc = run_cli("compare", "--seeds", "-1", "--runs", tree / "runs", "--out", tree / "out")
    assert "--seeds" in assert_refused(proc.returncode, proc.stderr, "compare")
    assert contents(tree) == ONLY_THE_FILE


# -- a fuzz over every command's paths and names ------------------------------------------

HOSTILE = ["", " ", "~nosuchuser", "~nosuchuser/x", "/dev/null/x", "a\0b"]
"""Values no path or name option may take: each must be one error line and exit status 2."""

CASES = [
    (train.main, "train", lambda v: ["--run-dir", v, "steps=1"]),
    (train.main, "train", lambda v: ["--resume", v]),
    (evaluate.main, "evaluate", lambda v: ["--main", v, "--sub", "teacher"]),
    (evaluate.main, "evaluate", lambda v: ["--main", "teacher", "--sub", v]),
    (evaluate.main, "evaluate", lambda v: ["--single", v]),
    (evaluate.main, "evaluate", lambda v: ["--single", "teacher", "--out", v]),
    (evaluate.main, "evaluate", lambda v: ["--single", "teacher", "--data-dir", v]),
    (compare.main, "compare", lambda v: ["--runs", v]),
    (compare.main, "compare", lambda v: ["--out", v]),
    (compare.main, "compare", lambda v: ["--report", v]),
    (viewer.main, "viewer", lambda v: [v, "--step", "1"]),
    (pretrain.main, "pretrain", lambda v: ["--out", v]),
    (world.main, "world", lambda v: ["--out", v]),
    (getmodel.main, "getmodel", lambda v: ["--out", v, "--no-install"]),
    (sft.main, "sft", lambda v: ["--out", v]),
]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("main, module, args", CASES, ids=[f"{m}-{i}" for i, (_, m, _) in enumerate(CASES)])
def test_no_command_gives_a_traceback_for_a_hostile_path_or_name(main, module, args, value, capsys, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative value that were accepted would land here
    with pytest.raises(SystemExit) as exit_:
        main(args(value))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_viewer_record_without_trajectories_is_one_line(tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    (records / "step-0001-main.json").write_text('{"learner": "main", "step": 1}')
    line = refused_in_process(viewer.main, [tmp_path, "--step", "1"], capsys, "viewer")
    assert "not a record the viewer can draw (no list of trajectories)" in line
    (records / "step-0001-main.json").write_text("[" * 100_000)
    line = refused_in_process(viewer.main, [tmp_path, "--step", "1"], capsys, "viewer")
    assert "not a record" in line


def test_a_config_of_brackets_nested_deep_is_one_line(tmp_path):
    from mgrpo_ref.config import TrainConfig

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="not a readable JSON file"):
        TrainConfig.load(tmp_path / "config.json")
