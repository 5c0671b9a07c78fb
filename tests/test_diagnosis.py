"""diagnosis.py by hand, and benchmarks/collapse_diagnosis.py on a two-step run of the tiny
base: recording every step leaves the run's numbers as they were."""

import json
import math

import pytest

from mgrpo_ref.compare import PRESETS, run_config, train_run
from mgrpo_ref.diagnosis import format_loss_step, gradient_split, heaviest_tokens, steps_before, token_gradient_weights

import collapse_diagnosis  # benchmarks/collapse_diagnosis.py (pytest's pythonpath)
from helpers import deterministic


def metrics_with(valid: list[float]) -> list[dict]:
    return [{"step": 0}] + [{"step": s, "sub/format_valid": v, "time/step_s": 1.0} for s, v in enumerate(valid, 1)]


def test_the_format_is_lost_from_the_first_step_that_stays_below_the_threshold():
    assert format_loss_step(metrics_with([0.9, 0.7, 0.9, 0.7, 0.6]), "sub") == 4
    assert format_loss_step(metrics_with([0.5, 0.5, 0.5]), "sub") == 1
    assert format_loss_step(metrics_with([0.9, 0.7, 0.85]), "sub") is None  # it came back
    assert format_loss_step(metrics_with([0.9, 0.9]), "main") is None  # a role the run did not log
    rows = steps_before(metrics_with([0.9] * 20), 12, ("sub",), window=3, after=1)
    assert [r["step"] for r in rows] == [9, 10, 11, 12, 13] and rows[0]["sub/grad_norm"] is None


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
