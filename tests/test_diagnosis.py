"""diagnosis.py by hand, and benchmarks/collapse_diagnosis.py on a two-step run of the tiny
base: recording every step leaves the run's numbers as they were."""

import json
import math

import pytest

from mgrpo_ref.compare import PRESETS, run_config, train_run
from mgrpo_ref.compare_tables import collapse_timelines, collapse_timelines_table
from mgrpo_ref.diagnosis import (collapse_eval, collapse_timeline, format_loss_step, gradient_split, heaviest_tokens,
                                 logged_roles, ratio_range, step_series, steps_before, token_gradient_weights,
                                 window_means)
from mgrpo_ref.rundir import deterministic

import collapse_diagnosis  # benchmarks/collapse_diagnosis.py (pytest's pythonpath)


def metrics_with(valid: list[float]) -> list[dict]:
    return [{"step": 0}] + [{"step": s, "sub/format_valid": v, "time/step_s": 1.0} for s, v in enumerate(valid, 1)]


def test_the_format_is_lost_from_the_first_step_that_stays_below_the_threshold():
    assert format_loss_step(metrics_with([0.9, 0.7, 0.9, 0.7, 0.6]), "sub") == 4
    assert format_loss_step(metrics_with([0.5, 0.5, 0.5]), "sub") == 1
    assert format_loss_step(metrics_with([0.9, 0.7, 0.85]), "sub") is None  # it came back
    assert format_loss_step(metrics_with([0.9, 0.9]), "main") is None  # a role the run did not log
    rows = steps_before(metrics_with([0.9] * 20), 12, {"sub": "sub"}, window=3, after=1)
    assert [r["step"] for r in rows] == [9, 10, 11, 12, 13] and rows[0]["sub/grad_norm"] is None


def test_the_collapse_is_the_first_evaluation_far_below_the_best_before_it():
    assert collapse_eval({0: 0.2, 10: 0.8, 20: 0.7, 30: 0.55, 40: 0.1}, 0.2) == (10, 30)
    assert collapse_eval({0: 0.7, 10: 0.5}, 0.2) is None  # exactly 20 points is not more than 20
    assert collapse_eval({0: 0.5, 10: 0.2, 20: 0.9}, 0.2) == (0, 10)  # the best so far, not the best overall
    assert collapse_eval({0: 0.2, 10: 0.9, 20: 0.85}, 0.2) is None


def curves(evals, main_valid, sub_valid, grad, sub_grad):
    steps = list(range(1, len(main_valid) + 1))
    return {"eval_step": list(evals), "eval_accuracy": list(evals.values()), "step": steps,
            "main_format_valid": main_valid, "sub_format_valid": sub_valid, "grad_norm": grad, "sub_grad_norm": sub_grad}


def test_a_timeline_reads_from_the_best_evaluation_on_which_came_first():
    team = curves({0: 0.2, 2: 0.8, 6: 0.3}, [1.0] * 6, [1.0, 0.5, 1.0, 0.9, 0.7, 0.6],
                  [0.1] * 6, [0.1, 3.0, 0.2, 1.5, 0.4, 0.3])
    t = collapse_timeline(team, clip=1.0)
    assert t["best"] == (2, 0.8) and t["fell"] == (6, 0.3)
    # the format dip and the norm at step 2 are not counted: they come at the best evaluation's step, not after it
    assert t["roles"]["sub"] == {"past_clip": (4, 1.5), "format_below": (5, 0.7)}
    assert t["roles"]["main"] == {"past_clip": None, "format_below": None} and t["order"] == "clip first"
    team["sub_grad_norm"][3] = 0.5
    assert collapse_timeline(team, clip=1.0)["order"] == "format dipped, no update past the clip"
    team["grad_norm"][4] = 2.0  # main's adapter, not the sub's: the order is read in the role whose format dipped
    assert collapse_timeline(team, clip=1.0)["order"] == "format dipped, no update past the clip"
    team["sub_grad_norm"][5] = 2.0
    assert collapse_timeline(team, clip=1.0)["order"] == "format dipped first"
    single = curves({0: 0.3, 3: 0.05}, [1.0, 0.9, 0.5], [None] * 3, [0.2, 0.1, 1.2], [None] * 3)
    t = collapse_timeline(single, clip=1.0)
    assert list(t["roles"]) == ["main"] and t["roles"]["main"]["past_clip"] == (3, 1.2)
    assert t["best"] == (0, 0.3) and t["fell"] == (3, 0.05) and t["order"] == "same step"
    kept = collapse_timeline(curves({0: 0.2, 3: 0.8}, [1.0] * 3, [1.0] * 3, [0.1] * 3, [0.1] * 3), clip=1.0)
    assert kept["fell"] is None and kept["best"] == (3, 0.8) and kept["order"] == "format kept"


def test_the_collapsed_runs_of_a_results_file_and_their_table():
    down = curves({0: 0.2, 2: 0.8, 6: 0.3}, [1.0] * 6, [1.0, 1.0, 0.9, 0.6, 0.6, 0.6], [0.1] * 6,
                  [0.1, 0.1, 0.5, 0.9, 0.3, 0.3])
    up = curves({0: 0.2, 2: 0.8, 6: 0.8}, [1.0] * 6, [1.0] * 6, [0.1] * 6, [0.1] * 6)
    run = {"config": {"max_grad_norm": 0.8}, "greedy": {}, "sampled": {}}
    results = {"variants": ["mgrpo"], "runs": [
        {**run, "variant": "mgrpo", "seed": 0, "curves": down, "greedy": {"accuracy": 0.3}, "sampled": {"accuracy": 0.3}},
        {**run, "variant": "mgrpo", "seed": 1, "curves": up, "greedy": {"accuracy": 0.8}, "sampled": {"accuracy": 0.8}}]}
    for r in results["runs"]:
        r["curves"]["eval_sampled_accuracy"] = r["curves"]["eval_accuracy"]
    rows = collapse_timelines(results)
    assert [(r["variant"], r["seed"], r["clip"]) for r in rows] == [("mgrpo", 0, 0.8)]  # seed 1 did not collapse
    assert rows[0]["roles"]["sub"] == {"past_clip": (4, 0.9), "format_below": (4, 0.6)} and rows[0]["order"] == "same step"
    text = collapse_timelines_table(rows)
    assert "| `mgrpo` s0 | 80.0 (2) | 30.0 (6) | never | never | step 4 (0.90) | step 4 (60%) | same step |" in text


def test_a_runs_series_and_their_window_means():
    metrics = [{"step": 0, "eval/accuracy": 0.25}, {"step": 1, "time/step_s": 1, "sub/sampled_nll": 0.123456},
               {"step": 2, "time/step_s": 1, "sub/sampled_nll": 0.3, "sub/mean_ratio": 1.0},
               {"step": 2, "eval/accuracy": 0.5}, {"step": 3, "time/step_s": 1}]
    x = step_series(metrics, {"sub": "sub"})
    assert x["step"] == [1, 2, 3] and x["sub/sampled_nll"] == [0.1235, 0.3, None]
    assert x["sub/mean_ratio"] == [None, 1.0, None] and x["eval_step"] == [0, 2] and x["eval_accuracy"] == [0.25, 0.5]
    assert window_means([1, 2, 3, 4, 5], [1.0, 3.0, None, 5.0, 7.0], 2) == {1: 2.0, 3: 5.0, 5: 7.0}


def test_the_ratio_range_of_a_run():
    metrics = [{"step": 0}, {"step": 1, "sub/mean_ratio": 1.0, "sub/clip_frac": 0.0},
               {"step": 2, "sub/mean_ratio": 1.2, "sub/clip_frac": 0.25}, {"step": 3, "sub/mean_ratio": 0.9}]
    assert ratio_range(metrics, "sub") == {"steps": 3, "min_ratio": 0.9, "max_ratio": 1.2, "max_clip_frac": 0.25}
    assert ratio_range(metrics, "main") is None
    metrics.append({"step": 4, "sub/mean_ratio": 1.0, "sub/clip_frac": None})  # a step that logged no clip fraction
    assert ratio_range(metrics, "sub")["max_clip_frac"] == 0.25


def test_what_a_role_logs_is_read_under_the_role_or_its_learner():
    from mgrpo_ref.step import LAYOUTS

    assert logged_roles(LAYOUTS["mgrpo"]) == {"main": "main", "sub": "sub"}
    assert logged_roles(LAYOUTS["shared"]) == {"main": "shared", "sub": "shared"}
    assert logged_roles(LAYOUTS["single_agent"]) == {"main": "single"}
    step = {"step": 1, "time/step_s": 1, "main/format_valid": 0.9, "main/reward_mean": 0.5,
            "single/grad_norm": 0.3, "single/sampled_nll": 0.2, "single/mean_ratio": 1.0, "single/clip_frac": 0.0}
    (row,) = steps_before([step], 1, {"main": "single"})
    assert row == {"step": 1, "main/grad_norm": 0.3, "main/sampled_nll": 0.2, "main/format_valid": 0.9,
                   "main/reward_mean": 0.5}
    x = step_series([step], {"main": "single"})
    assert x["main/mean_ratio"] == [1.0] and x["main/format_valid"] == [0.9] and x["main/grad_norm"] == [0.3]


def trajectory(advantage, copies, probs, mask, tokens=None):
    return {"advantage": advantage, "copies": copies, "logp": [math.log(p) for p in probs], "loss_mask": mask,
            "tokens": tokens or [f"t{i}" for i in range(len(probs))]}


def test_a_tokens_gradient_weight_is_its_slots_times_its_advantage_times_one_minus_its_probability():
    t = trajectory(-0.5, 2, [1.0, 0.5, 1.0, 0.9], [0, 1, 1, 1])
    assert token_gradient_weights(t) == pytest.approx([0.0, 0.5, 0.0, 0.1])
    with pytest.raises(ValueError, match="no per-token logp"):
        token_gradient_weights({k: v for k, v in t.items() if k != "logp"})


def test_the_heaviest_tokens_and_the_split_sum_over_a_step():
    step = [trajectory(1.0, 1, [1.0, 0.2, 0.9], [0, 1, 1], ["<q>", "Rome", "</a>"]),
            trajectory(-1.0, 1, [1.0, 0.6, 0.9], [0, 1, 1], ["<q>", "Rome", "</a>"])]
    heavy = heaviest_tokens(step, n=5)
    assert [h["token"] for h in heavy] == ["Rome", "</a>"]  # the context token "<q>" is not trained
    total = 0.8 + 0.1 + 0.4 + 0.1
    assert heavy[0]["share"] == pytest.approx(1.2 / total) and heavy[0]["count"] == 2
    assert heavy[0]["mean_p"] == pytest.approx(0.4) and heavy[0]["from_negative"] == pytest.approx(0.4 / 1.2)
    split = gradient_split(step)
    assert split["total"] == pytest.approx(total) and split["from_negative"] == pytest.approx(0.5 / total)
    assert split["on_unlikely_tokens"] == pytest.approx(0.8 / total)  # "Rome" at p 0.2
    assert split["never_sampled_tokens"] == 0.0
    rare = gradient_split(step + [trajectory(-1.0, 1, [1.0, 1e-4], [0, 1], ["<q>", "ope"])])
    assert rare["never_sampled_tokens"] == pytest.approx(1 / 5)  # one of five trained tokens


def test_recording_every_step_leaves_the_run_as_it_was_and_the_report_reads_it(tmp_path):
    out = tmp_path / "out"
    collapse_diagnosis.main(["--arm", "mgrpo", "--seed", "0", "--preset", "smoke", "--runs", str(tmp_path / "runs"),
                             "--out", str(out), "tensorboard=false"])
    plain = run_config(PRESETS["smoke"], "mgrpo", 0, ["tensorboard=false"])
    train_run(plain, tmp_path / "plain", progress=False)
    recorded = [deterministic(json.loads(line)) for line in (tmp_path / "runs" / "mgrpo-s0" / "metrics.jsonl").open()]
    unrecorded = [deterministic(json.loads(line)) for line in (tmp_path / "plain" / "metrics.jsonl").open()]
    assert recorded == unrecorded  # the same run: recording draws from no generator
    records = list((tmp_path / "runs" / "mgrpo-s0" / "records").glob("step-*.json"))
    assert len(records) == 2 * plain.steps  # every step, both learners
    t = json.loads(records[0].read_text())["trajectories"][0]
    assert len(t["logp"]) == len(t["tokens"]) and all(lp <= 0 for lp in t["logp"])
    result = json.loads((out / "mgrpo-s0.json").read_text())
    assert set(result["diagnosis"]["format_lost_at"]) == {"main", "sub"}
    assert [r["step"] for r in result["diagnosis"]["steps_before"]] == list(range(1, plain.steps + 1))
    assert result["diagnosis"]["tokens"] and "## mgrpo-s0" in (out / "README.md").read_text()
    ratios = result["diagnosis"]["ratios"]
    assert set(ratios) == {"main", "sub"} and ratios["sub"]["steps"] == plain.steps

    # the finished run again, against the unrecorded one: nothing is trained, every number agrees
    collapse_diagnosis.main(["--arm", "mgrpo", "--seed", "0", "--preset", "smoke", "--runs", str(tmp_path / "runs"),
                             "--out", str(out), "--same-as", str(tmp_path / "plain"), "tensorboard=false"])
    same = json.loads((out / "mgrpo-s0.json").read_text())["same_as"]
    assert same["values"] > 20 and same["differ"] == 0
    assert collapse_diagnosis.same_numbers(tmp_path / "plain", tmp_path / "runs" / "mgrpo-s0")["differ"] == 0
    short = tmp_path / "short"
    short.mkdir()
    logged = (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()
    (short / "metrics.jsonl").write_text("\n".join(logged[:-1]) + "\n")  # a re-run that stopped a line early
    assert collapse_diagnosis.same_numbers(short, tmp_path / "plain")["differ"] > 0  # what it never logged counts

    # a trial's own records: every run directory's series, and a README section on them
    collapse_diagnosis.main(["--steps", str(tmp_path), "--name", "both", "--out", str(out)])
    steps = json.loads((out / "steps-both.json").read_text())
    assert set(steps["runs"]) == {"plain"}  # tmp_path/runs holds runs one level down: not a run itself
    series = steps["runs"]["plain"]["series"]
    assert series["step"] == list(range(1, plain.steps + 1)) and len(series["sub/mean_ratio"]) == plain.steps
    assert series["eval_accuracy"] == [round(a, 4) for a in
                                       [m["eval/accuracy"] for m in map(json.loads, (tmp_path / "plain" / "metrics.jsonl").open())
                                        if "eval/accuracy" in m]]
    assert "## both: every run's own records" in (out / "README.md").read_text()
    with pytest.raises(SystemExit, match="no run directory"):
        collapse_diagnosis.main(["--steps", str(out), "--out", str(out)])
