"""benchmarks/real_model_study.py at smoke size on the committed tiny base: every piece of the
study written, a second call training nothing, the report's differences paired by question,
and a warm-up other than the one the results came from refused."""

import json

import pytest

import real_model_study as study  # benchmarks/real_model_study.py (pytest's pythonpath)

WARM_UP = dict(study.WARM_UP)  # as the module sets it (the fixture below patches it to a smoke size)

SMOKE_RECIPE = ["quantization=none", "steps=2", "questions_per_step=2", "rollouts=2", "min_train_hops=2",
                "min_train_hops_steps=1", "max_new_tokens=24", "eval_every=1", "eval_split=validation",
                "eval_questions=4", "eval_sampled_temperature=0", "checkpoint_every=1", "tensorboard=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    patch = pytest.MonkeyPatch()
    patch.setattr(study, "WARM_UP", {"steps": 2, "batch_size": 2, "n_worlds": 2})
    patch.setattr(study, "RECIPE", SMOKE_RECIPE)
    patch.setattr(study, "MAX_NEW_TOKENS", 24)
    argv = ["--model", "data/base", "--seeds", "0", "--questions", "6", "--runs", str(tmp / "runs"),
            "--out", str(tmp / "out")]
    study.main(argv)
    yield tmp, argv
    patch.undo()


def test_every_piece_of_the_study_is_written(finished):
    tmp, _ = finished
    out = tmp / "out"
    base = json.loads((out / "warm_up.json").read_text())
    assert base["n"] == 6 and len(base["correct"]) == len(base["questions"]) == len(base["sub_calls"]) == 6
    assert base["main"] == base["sub"] and len(base["digest"]) == 16 and base["warm_up_seconds"] > 0
    for arm in study.ARMS:
        run = json.loads((out / f"{arm}-s0.json").read_text())
        assert run["config"]["variant"] == arm and run["config"]["steps"] == 2
        assert run["config"]["base"].endswith("warm-up/adapter") and run["warm_up_digest"] == base["digest"]
        assert sorted(int(s) for s in run["validation_curve"]) == [0, 1, 2]  # on the validation split
        assert len(run["seconds_per_step"]) == 2 and run["final"]["questions"] == base["questions"]
    mgrpo, frozen = (json.loads((out / f"{arm}-s0.json").read_text()) for arm in study.ARMS)
    assert mgrpo["final"]["sub"].endswith("/sub") and frozen["final"]["sub"] == base["main"]  # the warm-up's sub
    assert mgrpo["trained_main_warm_up_sub"]["sub"] == base["main"] == mgrpo["warm_up_main_trained_sub"]["main"]
    assert "trained_main_warm_up_sub" not in frozen


def test_the_report_pairs_each_run_with_the_warm_up_by_question(finished):
    tmp, _ = finished
    out = tmp / "out"
    base = json.loads((out / "warm_up.json").read_text())
    mgrpo = json.loads((out / "mgrpo-s0.json").read_text())
    lift = sum(a - b for a, b in zip(mgrpo["final"]["correct"], base["correct"])) / 6
    text = (out / study.REPORT).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| mgrpo | 0 |"))
    assert f"{100 * lift:+.1f} [" in row
    assert "| 0 | trained | warm-up |" in text and "| 0 | warm-up | trained |" in text
    control = text.split("frozen sub-agent")[1].split("swapped")[0]
    assert any(line.startswith("| 0 | ") for line in control.splitlines())  # mgrpo - frozen_sub, seed 0


def test_a_second_call_trains_nothing_and_a_changed_warm_up_is_refused(finished, capsys):
    tmp, argv = finished
    out = tmp / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study, "WARM_UP", {"steps": 2, "batch_size": 2, "n_worlds": 2})
        patch.setattr(study, "RECIPE", SMOKE_RECIPE)
        study.main(argv)
        assert "mgrpo seed 0: done" in capsys.readouterr().out
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before
        base = json.loads((out / "warm_up.json").read_text())
        (out / "warm_up.json").write_text(json.dumps({**base, "digest": "0" * 16}))
        try:
            with pytest.raises(SystemExit) as exit_:
                study.main(argv)
            assert "is not the one the results" in str(exit_.value) and "0" * 16 in str(exit_.value)
        finally:
            (out / "warm_up.json").write_text(json.dumps(base))


def test_the_warm_up_command_defaults_to_the_study_s_warm_up():
    # `python -m mgrpo_ref.sft` and `make real-gpu` warm up as the study does (chosen on the
    # validation split): one recipe, not two
    from dataclasses import asdict

    from mgrpo_ref.sft import SFTConfig

    defaults = asdict(SFTConfig())
    assert {k: defaults[k] for k in WARM_UP} == WARM_UP


def test_the_learning_curves_carry_each_evaluation_s_wilson_interval(finished):
    from mgrpo_ref.intervals import proportion_interval

    tmp, _ = finished
    out = tmp / "out"
    assert (out / study.FIGURE).stat().st_size > 0 and f"]({study.FIGURE})" in (out / study.REPORT).read_text()
    run = json.loads((out / "mgrpo-s0.json").read_text())
    curve = study.validation_points(run)
    assert [step for step, *_ in curve] == [0, 1, 2]  # in step order, as ints
    for step, accuracy, low, high in curve:  # four validation questions each time (SMOKE_RECIPE)
        assert accuracy == run["validation_curve"][str(step)]
        wilson = proportion_interval(round(4 * accuracy), 4)
        assert (low, high) == (wilson.low, wilson.high) and low <= accuracy <= high
    fig = study.plot_curves(out)
    accuracy_axes, calls_axes = fig.axes[:2]
    assert [line.get_label() for line in calls_axes.get_lines()] == ["mgrpo, seed 0", "frozen_sub, seed 0"]
    assert list(calls_axes.get_lines()[0].get_ydata()) == run["train_sub_calls"]
    assert study.plot_curves(tmp) is None  # no run finished there


def test_the_seeds_together_average_each_question_over_the_seeds(finished, tmp_path):
    import shutil

    from mgrpo_ref.intervals import paired_difference

    tmp, _ = finished
    out = tmp_path / "out"
    shutil.copytree(tmp / "out", out)
    assert "The seeds together" not in study.report(out)  # one seed: the rows per seed say it all
    base = json.loads((out / "warm_up.json").read_text())
    for arm in study.ARMS:  # a second seed of each arm whose outcomes are the first's, every one flipped
        run = json.loads((out / f"{arm}-s0.json").read_text())
        run["seed"], run["final"]["correct"] = 1, [1 - c for c in run["final"]["correct"]]
        (out / f"{arm}-s1.json").write_text(json.dumps(run))
    runs = study.finished_runs(out)
    assert set(runs) == {(arm, seed) for arm in study.ARMS for seed in (0, 1)}
    assert study.seed_mean(runs, "mgrpo", [0, 1]) == [0.5] * 6  # right on one seed of two, every question
    rows = study.seeds_together(runs, base["correct"])
    lift = paired_difference([0.5] * 6, base["correct"])
    assert rows[2] == f"| mgrpo - warm-up | 0, 1 | {study.points(lift)} | {lift.verdict('higher', 'lower')} |"
    assert rows[4].startswith("| mgrpo - frozen_sub | 0, 1 | ") and len(rows) == 5
    assert "\n".join(rows) in study.report(out)


def test_each_validation_point_keeps_its_hops_and_calls_and_an_older_result_gains_them(finished, tmp_path):
    import shutil

    tmp, _ = finished
    records = [json.loads(line) for line in (tmp / "runs" / "mgrpo-s0" / "metrics.jsonl").read_text().splitlines()]
    evaluations = {r["step"]: r for r in records if "eval/accuracy" in r}
    path = tmp / "out" / "mgrpo-s0.json"
    run = json.loads(path.read_text())
    assert sorted(int(s) for s in run["validation_detail"]) == [0, 1, 2]
    for step, detail in run["validation_detail"].items():
        assert detail["accuracy_by_hops"] == evaluations[int(step)]["eval/accuracy_by_hops"]
        assert detail["mean_sub_calls"] == evaluations[int(step)]["eval/mean_sub_calls"]
    # a result written before the detail was kept gains it from its run's metrics, nothing else moves
    older = tmp_path / "mgrpo-s0.json"
    older.write_text(json.dumps({k: v for k, v in run.items() if k != "validation_detail"}))
    study.add_validation_detail(older, tmp / "runs")
    assert json.loads(older.read_text()) == run
    study.add_validation_detail(older, tmp / "runs")  # a second time: nothing to add
    assert json.loads(older.read_text()) == run
    # ... and not from a run it was not written from (other evaluation steps)
    other = tmp_path / "runs" / "mgrpo-s0"
    other.mkdir(parents=True)
    shutil.copy(tmp / "runs" / "mgrpo-s0" / "metrics.jsonl", other / "metrics.jsonl")
    with open(other / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**evaluations[2], "step": 3}) + "\n")
    older.write_text(json.dumps({k: v for k, v in run.items() if k != "validation_detail"}))
    with pytest.raises(SystemExit, match="is not the run"):
        study.add_validation_detail(older, tmp_path / "runs")
    assert "validation_detail" not in json.loads(older.read_text())  # the file as it was
