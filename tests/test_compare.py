"""The variant comparison (compare.py, compare_tables.py, compare_plots.py): table arithmetic,
learning curves, and a tiny real run."""

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import failure_kinds  # benchmarks/failure_kinds.py (pytest's pythonpath)
import pytest

from mgrpo_ref import compare, compare_plots, compare_tables, rundir
from mgrpo_ref.compare import base_and_final, curves, metrics, run_comparison, steps_left, time_left, train_run
from mgrpo_ref.compare_tables import table
from mgrpo_ref.config import TrainConfig
from mgrpo_ref.evaluate import FAILURE_KINDS
from mgrpo_ref.pretrain import SIZES, pretrain
from mgrpo_ref.protocol import ROLE_INSTRUCTIONS

TINY = ["questions_per_step=2", "rollouts=2", "d_max=2", "eval_questions=4", "max_new_tokens=12", "microbatch=8"]


def report(acc, by_hops):
    return {"accuracy": acc, "lenient_accuracy": acc, "format_valid": 1.0, "sub_format_valid": 1.0,
            "mean_sub_calls": 2.0, "accuracy_by_hops": by_hops}


def run(variant, seed, mode, base, final):
    (bg, bs), (fg, fs) = base, final
    return {"variant": variant, "seed": seed, "mode": mode, "base_greedy": report(*bg), "base_sampled": report(*bs),
            "greedy": report(*fg), "sampled": report(*fs)}


def test_table_gives_mean_and_sample_std_across_seeds_per_variant():
    base = ((0.1, {"1": 0.2, "2": 0.0}), (0.05, {"1": 0.1, "2": 0.0}))
    results = {
        "variants": ["mgrpo", "frozen_sub"], "sampled_temperature": 1.0,
        "runs": [
            run("mgrpo", 0, "multi", base, ((0.2, {"1": 0.4, "2": 0.0}), (0.1, {"1": 0.2, "2": 0.0}))),
            run("mgrpo", 1, "multi", base, ((0.4, {"1": 0.6, "2": 0.2}), (0.3, {"1": 0.4, "2": 0.2}))),
            run("frozen_sub", 0, "multi", base, ((0.3, {"1": 0.5, "2": 0.1}), (0.2, {"1": 0.3, "2": 0.1}))),
        ],
    }
    lines = table(results).splitlines()
    assert lines[0] == "| variant | runs | greedy | sampled (T=1) | greedy, 1 hop | greedy, 2 hops |"
    base_row, mgrpo, frozen = lines[2], lines[3], lines[4]
    # the base row: the step-0 evaluations in multi-agent mode, once per seed (0 and 1)
    assert base_row == "| base (multi) | 2 | 10.0 ± 0.0 | 5.0 ± 0.0 | 20.0 ± 0.0 | 0.0 ± 0.0 |"
    # mean of 20 and 40 is 30; the sample standard deviation of (20, 40) is 14.1
    assert mgrpo == "| mgrpo | 2 | 30.0 ± 14.1 | 20.0 ± 14.1 | 50.0 ± 14.1 | 10.0 ± 14.1 |"
    assert frozen == "| frozen_sub | 1 | 30.0 | 20.0 | 50.0 | 10.0 |"
    # per-world figures on the final adapters only (the base evaluated without them): no columns by size
    for r in results["runs"]:
        r["greedy"]["accuracy_by_world"] = {"1001": 0.5, "1004": 0.2}
    assert table(results).splitlines()[0] == lines[0]
    for r in results["runs"]:  # on both: the columns by size
        r["base_greedy"]["accuracy_by_world"] = {"1001": 0.3, "1004": 0.1}
    assert "| greedy, default worlds | greedy, large worlds |" in table(results).splitlines()[0]


def test_curves_split_evaluations_from_training_steps(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.1, "eval_sampled/accuracy": 0.05, "eval/mean_sub_calls": 2.0},
            {"step": 1, "main/reward_mean": 0.2, "sub/reward_mean": 0.3, "rollout/mean_sub_calls": 1.5,
             "main/grad_norm": 0.1, "sub/grad_norm": 2.5, "sub/format_valid": 0.5,
             "sub/weight_by_calls": {"1": 0.75, "2": 0.25}, "sub/d_histogram": {"0": 1, "1": 6, "2": 1}},
            {"step": 2, "main/reward_mean": 0.4, "rollout/mean_sub_calls": 0.0, "single/grad_norm": 0.7,
             "eval/accuracy": 0.3, "eval_sampled/accuracy": 0.2, "eval/mean_sub_calls": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = curves(metrics(tmp_path))
    assert c["eval_step"] == [0, 2] and c["eval_accuracy"] == [0.1, 0.3]
    assert c["eval_sampled_accuracy"] == [0.05, 0.2]
    assert c["step"] == [1, 2] and c["main_reward"] == [0.2, 0.4]
    assert c["sub_reward"] == [0.3, None]  # a variant without a sub-agent has no sub reward
    assert c["grad_norm"] == [0.1, 0.7] and c["sub_grad_norm"] == [2.5, None]  # main's, or the one adapter's
    assert c["sub_format_valid"] == [0.5, None]
    assert c["sub_weight_by_calls"] == [{"1": 0.75, "2": 0.25}, None]
    assert c["sub_calls_histogram"] == [{"0": 1, "1": 6, "2": 1}, None]


def test_time_left_is_the_pace_so_far_times_the_steps_to_take():
    assert time_left(600.0, 60, 120) == "about 20 min left at this pace"
    assert time_left(3600.0, 60, 120) == "about 2.0 h left at this pace"  # 7,200 s: in hours from 90 min on
    assert time_left(0.0, 0, 120) == "time left: not known until a run has finished"


def test_steps_left_counts_from_the_latest_checkpoint(tmp_path):
    cfg = TrainConfig(steps=30)
    assert steps_left(tmp_path / "never-started", cfg) == 30
    rundir.complete_checkpoint(rundir.new_checkpoint(tmp_path, 10), 10, 0.0, keep=0)
    rundir.complete_checkpoint(rundir.new_checkpoint(tmp_path, 20), 20, 0.0, keep=0)
    assert steps_left(tmp_path, cfg) == 10  # resumes after step 20
    (rundir.latest_checkpoint(tmp_path) / rundir.MARKER).write_text("{}")  # names no step: counted as none
    assert steps_left(tmp_path, cfg) == 30


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    pretrain(SIZES["tiny"], out, progress=False)
    return out


def test_tiny_comparison_trains_evaluates_and_skips_finished_runs(base, tmp_path, monkeypatch, capsys):
    kwargs = dict(preset="smoke", variants=["mgrpo", "single_agent", "shared"], seeds=[0, 1], runs_dir=tmp_path / "runs",
                  out=tmp_path / "out", overrides=[f"base={base}", *TINY], progress=False,
                  arm_seeds={"single_agent": 1, "shared": 1})
    original_trainer, original_train_run = compare.Trainer, compare.train_run
    original_greedy_episodes = compare.greedy_episodes
    results = run_comparison(**kwargs)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    # seeds outside, arms inside: a comparison stopped part way has every arm at its first seeds;
    # an arm given one seed (arm_seeds) trains only the first
    assert [(r["variant"], r["seed"]) for r in saved["runs"]] == [("mgrpo", 0), ("single_agent", 0), ("shared", 0),
                                                                  ("mgrpo", 1)]
    assert saved["arm_seeds"] == {"single_agent": 1, "shared": 1}
    printed = capsys.readouterr().out.splitlines()
    said = [line.split("] ", 1)[1] for line in printed if line.startswith("[")]
    # after each run, its figures and what is left of the plan at the pace of the runs so far
    outcomes = [line.split("; ", 1)[1] for line in printed if line.startswith("    greedy ")]
    assert len(outcomes) == 4 and outcomes[-1] == "no run left"
    assert all(re.fullmatch(r"about \d+ min left at this pace", line) for line in outcomes[:-1]), outcomes
    assert [line.split(" -> ")[0] for line in said] == [
        "run 1 of 4: mgrpo seed 0", "run 2 of 4: single_agent seed 0", "run 3 of 4: shared seed 0", "run 4 of 4: mgrpo seed 1"]
    assert {r["variant"]: r["seeds"] for r in saved["differences"]} == {"single_agent": [0], "shared": [0]}
    assert set(saved["base_episodes"]) == set(saved["base_episode_outcomes"]) == {"multi", "single"}
    assert len(saved["shown_questions"]) == 3 and len(set(saved["shown_questions"])) == 3
    for r in saved["runs"]:
        assert 0 <= r["greedy"]["accuracy"] <= 1 and 0 <= r["sampled"]["accuracy"] <= 1
        assert r["curves"]["step"] == [1, 2] and r["curves"]["eval_step"] == [0, 1, 2]
        assert len(r["episodes"]) == 3 and r["config"]["steps"] == 2
        kinds = FAILURE_KINDS if r["mode"] == "multi" else ("correct", "format", "wrong answer")
        assert len(r["episode_outcomes"]) == 3 and set(r["episode_outcomes"]) <= set(kinds)
        # the reports are the run's own first and last evaluations, greedy and sampled
        evals = [json.loads(line) for line in
                 (tmp_path / "runs" / f"{r['variant']}-s{r['seed']}" / "metrics.jsonl").read_text().splitlines()]
        assert r["base_greedy"]["accuracy"] == evals[0]["eval/accuracy"]
        assert r["sampled"]["accuracy"] == evals[-1]["eval_sampled/accuracy"]
    # each team's reported greedy episodes counted by where they failed, base and final
    for r in saved["runs"]:
        if r["mode"] != "multi":
            assert "failure_kinds" not in r  # a single agent delegates nothing
            continue
        for counted, report in ((r["failure_kinds"], r["greedy"]), (saved["base_failure_kinds"]["multi"], r["base_greedy"])):
            n = sum(counted[k] for k in FAILURE_KINDS)
            assert n == sum(sum(by_calls.values()) for by_calls in counted["calls_by_hops"].values()) > 0
            assert counted["correct"] / n == pytest.approx(report["accuracy"])
    single = saved["runs"][1]
    assert single["curves"]["sub_reward"] == [None, None]  # no sub-agent in single-agent mode
    assert ROLE_INSTRUCTIONS["main"] in saved["base_episodes"]["multi"][0]
    assert ROLE_INSTRUCTIONS["single"] in saved["base_episodes"]["single"][0]
    assert (tmp_path / "out" / "table.md").read_text() == table(results)
    # a second call trains nothing again: every run is finished
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "Trainer", no_training)
    again = run_comparison(**kwargs)
    assert [r["greedy"] for r in again["runs"]] == [r["greedy"] for r in saved["runs"]]
    # benchmarks/failure_kinds.py takes the counts a results.json records, and plays only a run
    # recorded without them (here mgrpo seed 1) from its directory; one whose directory is gone
    # (shared seed 0) is named and left out
    older = json.loads((tmp_path / "out" / "results.json").read_text())
    for r in older["runs"]:
        if (r["variant"], r["seed"]) in {("mgrpo", 1), ("shared", 0)}:
            del r["failure_kinds"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    shutil.rmtree(tmp_path / "runs" / "shared-s0")
    monkeypatch.setattr(sys, "argv", ["failure_kinds.py", str(tmp_path / "runs"), "--results", str(tmp_path / "older.json"),
                                      "--out", str(tmp_path / "kinds" / "failure_kinds.json")])
    capsys.readouterr()
    failure_kinds.main()
    counted = json.loads((tmp_path / "kinds" / "failure_kinds.json").read_text())
    assert counted["arms"]["base"] == {"-": saved["base_failure_kinds"]["multi"]}
    assert counted["arms"]["mgrpo"]["0"] == saved["runs"][0]["failure_kinds"]  # from the record, not played
    assert sum(counted["arms"]["mgrpo"]["1"][k] for k in FAILURE_KINDS) == counted["n"]  # played
    assert "shared" not in counted["arms"] and counted["split"] == saved["runs"][0]["config"]["eval_split"]
    assert "shared seed 0: recorded without its counts, and not finished in" in capsys.readouterr().out
    # nor does one without the run directories: results.json's records are kept as they are,
    # and nothing is evaluated again
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(compare, "greedy_episodes", no_training)
    capsys.readouterr()
    from_record = run_comparison(**kwargs)
    assert from_record["runs"] == saved["runs"] and from_record["shown_questions"] == saved["shown_questions"]
    assert from_record["base_episodes"] == saved["base_episodes"]
    assert "run 4 of 4: mgrpo seed 1: recorded in" in capsys.readouterr().out
    # results recorded under another config are refused before anything runs, and kept
    before = (tmp_path / "out" / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="records mgrpo seed 0 with another config"):
        run_comparison(**(kwargs | {"overrides": kwargs["overrides"] + ["lr=5e-4"]}))
    # and so are results holding runs the new plan leaves out: rewriting them would lose those
    with pytest.raises(FileExistsError, match=r"does not plan \(mgrpo seed 1\)"):
        run_comparison(**(kwargs | {"seeds": [0]}))
    assert (tmp_path / "out" / "results.json").read_bytes() == before
    # a comparison stopped part way trains only what results.json lacks, and keeps what it shows
    # and the older comparison it was read against
    partial = json.loads(before)
    partial["runs"] = partial["runs"][:3]  # mgrpo seed 1 not yet recorded
    partial["against"] = {"results": "elsewhere/results.json", "by": "t", "differences": saved["differences"]}
    (tmp_path / "out" / "results.json").write_text(json.dumps(partial))
    trained = []
    monkeypatch.setattr(compare, "greedy_episodes", original_greedy_episodes)
    monkeypatch.setattr(compare, "train_run", lambda cfg, run_dir, **kw: trained.append(run_dir.name) or
                        original_train_run(cfg, run_dir, **kw))
    monkeypatch.setattr(compare, "Trainer", original_trainer)
    resumed = run_comparison(**kwargs)
    assert trained == ["mgrpo-s1"] and resumed["runs"][:3] == saved["runs"][:3]
    assert resumed["shown_questions"] == saved["shown_questions"] and resumed["base_episodes"] == saved["base_episodes"]
    kept = json.loads((tmp_path / "out" / "results.json").read_text())
    assert kept["against"] == partial["against"] and "conclusions" in kept


def test_results_that_cannot_be_read_are_refused_and_kept(tmp_path, monkeypatch):
    """A results.json in --out that is not a comparison's is one clear error before any
    training, and stays as it was."""
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite unreadable results")

    monkeypatch.setattr(compare, "Trainer", no_training)
    for text in ("{not json", '{"runs": [{"seed": 0}]}', "[1, 2]", '{"runs": [{"variant": "mgrpo", "seed": 0}]}',
                 '{"runs": [{"variant": "mgrpo", "seed": 0, "config": {"no_such_field": 1}}]}'):
        (tmp_path / "results.json").write_text(text)
        with pytest.raises(FileExistsError, match="not a comparison's results"):
            run_comparison(preset="smoke", variants=["mgrpo"], seeds=[0], runs_dir=tmp_path / "runs", out=tmp_path)
        assert (tmp_path / "results.json").read_text() == text
    text = '{"runs": [], "shown_questions": ["no-such-question"]}'  # questions the split no longer holds
    (tmp_path / "results.json").write_text(text)
    with pytest.raises(FileExistsError, match="shows questions that eval_worlds does not hold"):
        run_comparison(preset="smoke", variants=["mgrpo"], seeds=[0], runs_dir=tmp_path / "runs", out=tmp_path)
    assert (tmp_path / "results.json").read_text() == text
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_with_another_config_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(steps=5).to_json())
    with pytest.raises(FileExistsError, match="another config"):
        train_run(TrainConfig(steps=6), run, progress=False)
    # finished or not: a finished run of another config is not silently reused either
    (run / "checkpoints" / "step_00005").mkdir(parents=True)
    (run / "checkpoints" / "step_00005" / "controller.json").write_text(json.dumps({"step": 5}))
    with pytest.raises(FileExistsError, match="another config"):
        train_run(TrainConfig(steps=5, lr=5e-4), run, progress=False)


def test_the_cli_refuses_a_run_directory_with_another_config_in_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "mgrpo-s0").mkdir(parents=True)
    (runs / "mgrpo-s0" / "config.json").write_text(TrainConfig(steps=99).to_json())
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--preset", "smoke", "--seeds", "0", "--variants", "mgrpo", "--runs", str(runs),
                      "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "another config" in err and "Traceback" not in err
    assert TrainConfig.from_dict(json.loads((runs / "mgrpo-s0" / "config.json").read_text())).steps == 99


def test_missing_evaluations_are_a_clear_error(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.1}, {"step": 2, "eval/accuracy": 0.3, "eval_sampled/accuracy": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"step\(s\) \[0\]"):
        base_and_final(metrics(tmp_path), 2, tmp_path)


def test_differences_pair_runs_by_seed_and_use_only_common_seeds():
    """frozen_sub - mgrpo on seeds 0, 1, 2 (seed 3 has no mgrpo run and is left out):
    greedy differences +18, +20, +22 points -> mean +20, sd 2, half-width 4.303 * 2 / sqrt(3)."""
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))

    def final(g):
        return ((g, {"1": g}), (0.5, {"1": 0.5}))

    results = {"variants": ["mgrpo", "frozen_sub"], "runs": [
        run("mgrpo", 0, "multi", base, final(0.40)), run("mgrpo", 1, "multi", base, final(0.50)),
        run("mgrpo", 2, "multi", base, final(0.30)),
        run("frozen_sub", 0, "multi", base, final(0.58)), run("frozen_sub", 1, "multi", base, final(0.70)),
        run("frozen_sub", 2, "multi", base, final(0.52)), run("frozen_sub", 3, "multi", base, final(0.99))]}
    rows = {r["decoding"]: r for r in compare_tables.differences(results)}
    greedy, sampled = rows["greedy"], rows["sampled"]
    assert greedy["seeds"] == [0, 1, 2]
    half = 4.302653 * 2 / 3 ** 0.5
    assert greedy["mean"] == pytest.approx(20.0)
    assert (greedy["low"], greedy["high"]) == pytest.approx((20 - half, 20 + half), abs=1e-3)
    # three seeds of one sign: the exact test's p is 2/8, so the t interval calls it alone
    assert greedy["p_exact"] == 0.25
    assert greedy["verdict"] == "no measurable difference (the t interval alone)"
    assert sampled["mean"] == 0.0 and sampled["p_exact"] == 1.0 and sampled["verdict"] == "no measurable difference"
    text = compare_tables.differences_table(compare_tables.differences(results))
    assert ("| frozen_sub - mgrpo | greedy | 3 | +20.0 | [+15.0, +25.0] | 0.2500 | "
            "no measurable difference (the t interval alone) |") in text


def test_a_difference_both_tests_agree_on_is_called():
    """Eight seeds, frozen_sub 10 points above mgrpo give or take one: t interval and exact
    test (p = 2/256) agree."""
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))
    runs = []
    for s in range(8):
        g = 0.3 + 0.05 * s
        runs.append(run("mgrpo", s, "multi", base, ((g, {"1": g}), (0.5, {"1": 0.5}))))
        runs.append(run("frozen_sub", s, "multi", base, ((g + 0.10 + 0.01 * (-1) ** s, {"1": g}), (0.5, {"1": 0.5}))))
    greedy = next(r for r in compare_tables.differences({"variants": ["mgrpo", "frozen_sub"], "runs": runs})
                  if r["decoding"] == "greedy")
    assert greedy["mean"] == pytest.approx(10.0) and greedy["p_exact"] == 2 / 256
    assert greedy["verdict"] == "frozen_sub higher"


@pytest.mark.parametrize("pair", ["unaligned=2", "mgrpo=9", "mgrpo=0", "mgrpo", "mgrpo=two"])
def test_a_bad_seeds_for_is_one_line(pair, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--variants", "mgrpo", "shared", "--seeds", "0", "1", "--seeds-for", pair,
                      "--out", "/tmp/never-written"])
    assert f"--seeds-for {pair}: expected ARM=N" in capsys.readouterr().err
    assert compare.seeds_per_arm(["shared=1", "mgrpo=2"], ["mgrpo", "shared"], 2) == {"shared": 1, "mgrpo": 2}
    with pytest.raises(ValueError, match="names shared twice"):
        compare.seeds_per_arm(["shared=1", "shared=2"], ["mgrpo", "shared"], 2)
    with pytest.raises(ValueError, match="not an arm of this comparison"):
        run_comparison(preset="smoke", variants=["mgrpo"], seeds=[0], arm_seeds={"shared": 1})


def test_the_option_seeds_for_may_be_given_more_than_once(monkeypatch):
    seen = {}
    monkeypatch.setattr(compare, "run_comparison", lambda *a, **kw: seen.update(kw) or {"runs": [], "seconds": 0})
    monkeypatch.setattr(compare, "table", lambda results: "")
    compare.main(["--variants", "mgrpo", "shared", "unaligned", "--seeds", "0", "1", "2",
                  "--seeds-for", "shared=1", "--seeds-for", "unaligned=2", "--out", "/tmp/never-written"])
    assert seen["arm_seeds"] == {"shared": 1, "unaligned": 2}


def test_more_seeds_than_the_exact_test_lists_is_one_line(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--seeds", *map(str, range(23)), "--out", "/tmp/never-written"])
    assert "at most 22 seeds" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at most 22 seeds"):
        run_comparison(preset="smoke", seeds=list(range(23)))


def test_the_report_option_rewrites_the_tables_without_training(tmp_path):
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))
    results = {"variants": ["mgrpo", "shared"], "sampled_temperature": 1.0, "runs": [
        run(v, s, "multi", base, ((0.1 * (s + 1) + (v == "shared") * 0.05, {"1": 0.5}), (0.5, {"1": 0.5})))
        for v in ("mgrpo", "shared") for s in (0, 1)]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    compare.main(["--report", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table(results)
    assert "| shared - mgrpo | greedy | 2 | +5.0 |" in (tmp_path / "differences.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["differences"][0]["variant"] == "shared"
    assert (tmp_path / "differences.png").stat().st_size > 0
    assert "by size of world" not in (tmp_path / "differences.md").read_text()  # no per-world figures
    for r in results["runs"]:  # with them, differences.md adds the table by size of world
        r["greedy"]["accuracy_by_world"] = {"1001": 0.5, "1004": 0.2 + (r["variant"] == "shared") * 0.1}
    (tmp_path / "results.json").write_text(json.dumps(results))
    compare.main(["--report", str(tmp_path)])
    text = (tmp_path / "differences.md").read_text()
    assert "## Greedy accuracy by size of world" in text and "| shared - mgrpo | large | 2 | 30.0 | 20.0 | +10.0 |" in text
    assert len(json.loads((tmp_path / "results.json").read_text())["differences_by_size"]) == 2


def test_a_comparison_killed_while_it_writes_its_results_keeps_the_old_file(tmp_path, monkeypatch):
    """results.json holds every finished run of a comparison that may take days: a kill while a
    new one is written (here, the write stops half way) must leave the old file whole."""
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))
    results = {"variants": ["mgrpo", "shared"], "sampled_temperature": 1.0, "runs": [
        run(v, s, "multi", base, ((0.5, {"1": 0.5}), (0.5, {"1": 0.5}))) for v in ("mgrpo", "shared") for s in (0, 1)]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    before = (tmp_path / "results.json").read_bytes()
    written = Path.write_text

    def killed_half_way(self, text, *args, **kwargs):
        if self.name.startswith("results.json"):
            written(self, text[: len(text) // 2])
            raise KeyboardInterrupt
        return written(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        compare_tables.write_reports(json.loads(before), tmp_path)
    assert (tmp_path / "results.json").read_bytes() == before


def test_the_report_option_on_a_missing_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--report", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("python -m mgrpo_ref.compare: error:")


def test_an_ablation_is_mgrpo_with_its_own_overrides_and_a_run_directory_of_its_own():
    cfg = compare.run_config(compare.PRESETS["cpu"], "no_shared_fate", 3, ["steps=5"])
    assert cfg.variant == "mgrpo" and cfg.reward.b2 == 0 and cfg.seed == 3 and cfg.steps == 5
    assert compare.run_config(compare.PRESETS["cpu"], "unaligned", 0, []).alignment == "none"
    assert compare.run_config(compare.PRESETS["cpu"], "shared_fate_only", 0, []).reward.b3 == 0
    assert compare.run_config(compare.PRESETS["cpu"], "mgrpo", 0, []).reward.b2 > 0
    assert compare.run_config(compare.PRESETS["cpu"], "stale_sub", 0, []).sub_staleness == 1
    assert set(compare.ABLATIONS) < set(compare.ARMS) and set(compare.ARMS) >= {"mgrpo", "frozen_sub"}
    # the longer arm: single-agent GRPO on three times the preset's (or the overridden) steps
    longer = compare.run_config(compare.PRESETS["cpu"], "single_agent_3x", 1, [])
    common = compare.run_config(compare.PRESETS["cpu"], "single_agent", 1, [])
    assert longer.variant == "single_agent" and longer.steps == 3 * common.steps == 180
    assert replace(longer, steps=common.steps) == common
    assert compare.run_config(compare.PRESETS["smoke"], "single_agent_3x", 0, ["steps=4"]).steps == 12
    # ... and its curriculum stretched with them: multi-hop questions for the same share of the run
    curriculum = compare.run_config(compare.PRESETS["real-gpu"], "single_agent_3x", 0, [])
    assert (curriculum.steps, curriculum.min_train_hops_steps) == (540, 360)
    assert compare.run_config(compare.PRESETS["real-gpu"], "single_agent", 0, []).min_train_hops_steps == 120
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--variants", "no_such_arm"])
    assert exit_.value.code == 2


def test_a_recipe_is_mgrpo_with_its_own_overrides_and_not_an_arm_of_the_comparison():
    assert not set(compare.RECIPES) & set(compare.ARMS)
    mgrpo = compare.run_config(compare.PRESETS["cpu-long"], "mgrpo", 2, [])
    changed = {}
    for recipe, (variant, overrides) in compare.RECIPES.items():
        cfg = compare.run_config(compare.PRESETS["cpu-long"], recipe, 2, [])
        assert variant == cfg.variant == "mgrpo" and cfg.seed == 2 and cfg.steps == 120
        # the same run as mgrpo's but for the fields the recipe names
        fields = {o.partition("=")[0] for o in overrides}
        assert cfg == replace(mgrpo, **{f: getattr(cfg, f) for f in fields}) != mgrpo
        changed[recipe] = fields
    assert changed["sub_lr_3e-4"] == {"sub_lr"} and changed["warmup_decay"] == {"warmup_ratio", "lr_schedule"}
    # a warm-up over a tenth of the steps, whatever the preset's length
    assert [compare.run_config(compare.PRESETS[p], "warmup_decay", 0, []).warmup_steps
            for p in ("cpu-long", "cpu", "smoke")] == [12, 6, 1]


@pytest.mark.parametrize("preset", sorted(compare.PRESETS))
def test_every_preset_gives_every_arm_a_valid_config(preset):
    for arm in compare.TRAINABLE:
        cfg = compare.run_config(compare.PRESETS[preset], arm, 0, [])
        assert cfg.variant == compare.TRAINABLE[arm][0] and cfg.seed == 0
        if preset == "real-gpu":  # the warmed-up real model, in 4-bit
            assert cfg.quantization == "nf4" and cfg.base.endswith("/adapter")


def test_the_real_model_preset_without_its_warm_up_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--preset", "real-gpu", f"base={tmp_path / 'sft' / 'adapter'}", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "sft/adapter" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_tiny_comparison_with_an_ablation_trains_it_and_reports_its_paired_difference(base, tmp_path):
    results = run_comparison(preset="smoke", variants=["mgrpo", "unaligned"], seeds=[0], runs_dir=tmp_path / "runs",
                             out=tmp_path / "out", overrides=[f"base={base}", *TINY], progress=False)
    config = json.loads((tmp_path / "runs" / "unaligned-s0" / "config.json").read_text())
    assert config["variant"] == "mgrpo" and config["alignment"] == "none"
    assert [r["variant"] for r in results["runs"]] == ["mgrpo", "unaligned"]
    rows = results["differences"]
    assert [(r["variant"], r["decoding"]) for r in rows] == [("unaligned", "greedy"), ("unaligned", "sampled")]
    text = (tmp_path / "out" / "differences.md").read_text()  # overall, greedy and sampled; then greedy by size of world
    rows = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| unaligned - mgrpo |")]
    assert rows == ["greedy", "sampled", "default", "large"]


def test_accuracy_by_world_size_and_the_range_over_worlds():
    report = {"accuracy_by_world": {"1001": 0.5, "1002": 0.7, "1003": 0.6, "1004": 0.1, "1005": 0.3, "1006": 0.2}}
    assert compare_tables.by_size(report) == pytest.approx({"default": 0.6, "large": 0.2})
    assert compare_tables.by_size({"accuracy_by_world": {"1000": 0.4}}) is None  # one size only
    assert compare_tables.by_size({"accuracy": 0.4}) is None  # a report from before per-world figures
    other = {"accuracy_by_world": {w: 1 - a for w, a in report["accuracy_by_world"].items()}}
    assert compare_tables.world_range([report, other]) == pytest.approx((0.5, 0.5))  # each world averaged first
    assert compare_tables.world_range([report]) == pytest.approx((0.1, 0.7))
    assert compare_tables.world_range([report, {"accuracy": 0.3}]) is None


def test_differences_by_size_pair_each_size_of_world_by_seed():
    """frozen_sub against mgrpo on three seeds: level on the default-size worlds, 40, 45 and 50
    points lower on the large ones -> mean -45, sd 5, half-width 4.303 * 5 / sqrt(3)."""
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))

    def sized(variant, seed, default, large):
        r = run(variant, seed, "multi", base, ((0.5, {"1": 0.5}), (0.5, {"1": 0.5})))
        r["greedy"]["accuracy_by_world"] = {"1001": default, "1002": default, "1003": default,
                                            "1004": large, "1005": large, "1006": large}
        return r

    runs = [sized("mgrpo", s, 0.9, 0.8) for s in range(3)]
    runs += [sized("frozen_sub", s, 0.9, 0.8 - drop) for s, drop in enumerate((0.40, 0.45, 0.50))]
    rows = {r["worlds"]: r for r in compare_tables.differences_by_size({"variants": ["mgrpo", "frozen_sub"], "runs": runs})}
    default, large = rows["default"], rows["large"]
    assert default["mean"] == pytest.approx(0.0) and default["p_exact"] == 1.0
    assert default["verdict"] == "no measurable difference"
    half = 4.302653 * 5 / 3 ** 0.5
    assert large["seeds"] == [0, 1, 2] and large["mean"] == pytest.approx(-45.0)
    assert (large["low"], large["high"]) == pytest.approx((-45 - half, -45 + half), abs=1e-3)
    assert (large["variant_accuracy"], large["reference_accuracy"]) == pytest.approx((35.0, 80.0))
    assert large["p_exact"] == 0.25 and large["verdict"] == "no measurable difference (the t interval alone)"
    text = compare_tables.differences_by_size_table(list(rows.values()))
    assert ("| frozen_sub - mgrpo | large | 3 | 35.0 | 80.0 | -45.0 | [-57.4, -32.6] | 0.2500 | "
            "no measurable difference (the t interval alone) |") in text
    del runs[0]["greedy"]["accuracy_by_world"]  # a run without per-world figures: no table by size
    assert compare_tables.differences_by_size({"variants": ["mgrpo", "frozen_sub"], "runs": runs}) == []


def curve_run(variant, seed, greedy, sampled, steps=(0, 20, 40, 60)):
    """A run whose held-out curves are ``greedy`` and ``sampled`` (fractions) at ``steps``."""
    r = run(variant, seed, "multi", ((greedy[0], {"1": greedy[0]}), (sampled[0], {"1": sampled[0]})),
            ((greedy[-1], {"1": greedy[-1]}), (sampled[-1], {"1": sampled[-1]})))
    r["curves"] = {"eval_step": list(steps), "eval_accuracy": list(greedy), "eval_sampled_accuracy": list(sampled)}
    return r


def test_the_late_change_is_read_off_a_line_through_every_late_evaluation():
    """Over steps 80-120 the curve 70, 75, 80, 85, 80 ends 10 above where it starts, but its
    least-squares line rises 0.3 a step (sum of (s - 100)(v - 78) = 300 over sum of (s - 100)^2 =
    1000): 12 over the 40 steps. Evaluations before the start do not count; two evaluations
    give the difference of the ends."""
    steps = [0, 40, 80, 90, 100, 110, 120]
    assert compare_tables.late_change(steps, [20, 99, 70, 75, 80, 85, 80], 80) == pytest.approx(12.0)
    assert compare_tables.late_change([0, 40, 60], [20, 70, 73], 40) == pytest.approx(3.0)
    assert compare_tables.late_change(steps, [20, 50, 80, 80, 80, 80, 80], 80) == pytest.approx(0.0)


def test_stability_counts_collapsed_runs_and_tests_whether_the_curves_flattened(tmp_path):
    """mgrpo: from step 40 to 60 the greedy curves gain +3, +4, +5 points (still rising, the
    interval 4 +- 4.303 * 1 / sqrt(3) excludes 0) and the sampled ones -1, +1, 0 (flat).
    unaligned: seed 1 ends 50 points below its best (collapsed), seed 0 only 10 below."""
    results = {"variants": ["mgrpo", "unaligned"], "sampled_temperature": 1.0, "runs": [
        curve_run("mgrpo", 0, (0.2, 0.5, 0.70, 0.73), (0.2, 0.4, 0.60, 0.59)),
        curve_run("mgrpo", 1, (0.2, 0.6, 0.70, 0.74), (0.2, 0.4, 0.60, 0.61)),
        curve_run("mgrpo", 2, (0.2, 0.4, 0.70, 0.75), (0.2, 0.4, 0.60, 0.60)),
        curve_run("unaligned", 0, (0.2, 0.8, 0.75, 0.70), (0.2, 0.5, 0.5, 0.5)),
        curve_run("unaligned", 1, (0.2, 0.8, 0.60, 0.30), (0.2, 0.5, 0.5, 0.1))]}
    rows = {r["variant"]: r for r in compare_tables.stability(results)}
    mgrpo, unaligned = rows["mgrpo"], rows["unaligned"]
    assert mgrpo["late_step"] == 40 and mgrpo["collapsed"] == []
    half = 4.302653 * 1 / 3 ** 0.5
    greedy = mgrpo["late_change_greedy"]
    assert (greedy["mean"], greedy["low"], greedy["high"]) == pytest.approx((4.0, 4 - half, 4 + half), abs=1e-3)
    assert greedy["verdict"] == "still rising" and mgrpo["late_change_sampled"]["verdict"] == "flat"
    assert unaligned["collapsed"] == [1] and unaligned["best_greedy"] == [0.8, 0.8]
    text = compare_tables.stability_table(compare_tables.stability(results)).splitlines()
    assert text[2].startswith("| mgrpo | 3 | 74.0 | 74.0 | 0 (none) | +4.0 [+1.5, +6.5] from step 40: still rising |")
    assert text[3].startswith("| unaligned | 2 | 80.0 | 50.0 | 1 (1) |")
    # a longer arm is judged over its own last third; one seed gives no verdict
    longer = {"variants": ["single_agent_3x"], "runs": [
        curve_run("single_agent_3x", 0, [0.3] * 7, [0.2] * 7, steps=range(0, 181, 30))]}
    (row,) = compare_tables.stability(longer)
    assert row["late_step"] == 120 and row["late_change_greedy"]["verdict"] == "one seed: no verdict"
    # a drop of exactly 20 points is not a collapse, whatever the float rounding
    assert not compare_tables.collapsed(0.7, 0.5) and not compare_tables.collapsed(0.8, 0.6) and compare_tables.collapsed(0.8, 0.59)
    # a wide interval that covers 0 allows no verdict; a run evaluated only at its ends has no late step
    wide = {"variants": ["mgrpo"], "runs": [curve_run("mgrpo", s, (0.2, 0.5, 0.5, 0.5 + g), (0.2, 0.4, 0.4, 0.4))
                                            for s, g in enumerate((0.10, 0.02, -0.05))]}
    assert compare_tables.stability(wide)[0]["late_change_greedy"]["verdict"] == "no measurable change"
    ends_only = {"variants": ["mgrpo"], "runs": [curve_run("mgrpo", s, (0.2, 0.8), (0.2, 0.7), steps=(0, 60))
                                                 for s in (0, 1)]}
    (row,) = compare_tables.stability(ends_only)
    assert row["late_step"] is None and row["late_change_greedy"] is None
    assert "no evaluation between the first and the last" in compare_tables.stability_table([row])
    # the per-seed figure draws one panel per arm, each column's lowest panel labelled
    fig = compare_plots.plot_runs(results, tmp_path / "runs.png")
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == ["training step"] * 2
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()][:2] == ["mgrpo (3 seeds)", "unaligned (2 seeds)"]
    assert len(fig.axes[0].lines) == 3 + 1  # three seeds and the base's level
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 0", "seed 1", "seed 2"]
    assert (tmp_path / "runs.png").stat().st_size > 0
    assert len(fig.axes) == 2  # two arms: two panels, no empty third column
    assert len(compare_plots.plot_runs(longer).axes) == 1


def test_a_finished_run_is_skipped_only_when_its_final_checkpoint_is_intact(tmp_path, monkeypatch):
    from mgrpo_ref import rundir

    cfg = TrainConfig(steps=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text(cfg.to_json())
    final = rundir.new_checkpoint(run, 2)
    (final / "main_state.pt").write_bytes(b"state")
    rundir.complete_checkpoint(final, 2, 0.0, keep=0)
    trained = []

    class Recorder:  # stands in for Trainer: what train_run would train
        def __init__(self, cfg, run_dir, resume, progress):
            trained.append(resume)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self):
            pass

    monkeypatch.setattr(compare, "Trainer", Recorder)
    train_run(cfg, run, progress=False)
    assert trained == []  # finished: skipped
    (final / "main_state.pt").write_bytes(b"stat")  # same size, other bytes
    train_run(cfg, run, progress=False)
    assert trained == [True]  # its final checkpoint is broken: resumed, which redoes it


def test_alignment_weights_pair_the_multi_call_share_by_seed():
    """Two steps per run; the multi-call share is the step mean of the shares at d >= 2:
    mgrpo seed 0 (0.2 + 0.4) / 2 = 30%, unaligned seed 0 (0.5 + 0.7) / 2 = 60%; seed 1 30%
    and 50%; seed 2 has no unaligned run and is left out; a step without sub trajectories
    (an empty dict) does not count."""
    def run(variant, seed, shares, calls):
        return {"variant": variant, "seed": seed, "curves": {"sub_weight_by_calls": shares, "train_sub_calls": calls}}

    results = {"runs": [
        run("mgrpo", 0, [{"1": 0.8, "2": 0.2}, {"1": 0.6, "3": 0.4}], [1.0, 2.0]),
        run("mgrpo", 1, [{"1": 0.7, "2": 0.3}, {}, {"1": 0.7, "4": 0.3}], [1.0, 0.0, 1.0]),
        run("mgrpo", 2, [{"1": 1.0}], [1.0]),
        run("unaligned", 0, [{"1": 0.5, "2": 0.5}, {"1": 0.3, "2": 0.4, "3": 0.3}], [2.0, 3.0]),
        run("unaligned", 1, [{"1": 0.5, "2": 0.5}, {"1": 0.5, "2": 0.5}], [2.0, 2.0])]}
    w = compare_tables.alignment_weights(results)
    assert w["seeds"] == [0, 1]
    assert w["mgrpo"]["multi_call_share"] == pytest.approx([30.0, 30.0])
    assert w["unaligned"]["multi_call_share"] == pytest.approx([60.0, 50.0])
    assert w["mgrpo"]["mean_calls"] == pytest.approx([1.5, 2 / 3]) and w["unaligned"]["mean_calls"] == [2.5, 2.0]
    d = w["difference"]
    assert d["mean"] == pytest.approx(25.0) and d["p_exact"] == 0.5  # two pairs: the exact test cannot call it
    assert d["verdict"].startswith("no measurable difference")
    md = compare_tables.alignment_table(w)
    assert "| mgrpo | 2 | 30.0 | 1.08 |" in md and "| unaligned | 2 | 55.0 | 2.25 |" in md
    assert "| unaligned - mgrpo | +25.0 |" in md and "| 0.5 | no measurable difference" in md
    for r in results["runs"]:
        r["curves"]["step"] = list(range(1, len(r["curves"]["train_sub_calls"]) + 1))
    fig = compare_plots.plot_weight_by_calls({"runs": [r for r in results["runs"] if r["seed"] == 0]}, smooth=1)
    share, calls = ([list(line.get_ydata()) for line in ax.get_lines()] for ax in fig.axes)
    assert share == [pytest.approx([20.0, 40.0]), pytest.approx([50.0, 70.0])]  # mgrpo, unaligned: % at d >= 2
    assert calls == [[1.0, 2.0], [2.0, 3.0]]
    assert compare_tables.multi_call_shares([{"1": 0.6, "3": 0.4}, {}, None]) == [pytest.approx(0.4), None, None]
    # a run without the shares (an older run, or no sub-agent) leaves nothing to pair
    assert compare_tables.multi_call_share([None, None]) is None
    assert compare_tables.alignment_weights({"runs": [run("mgrpo", 0, [None], [1.0])]}) is None


def test_alignment_weights_by_number_of_calls():
    """The same runs as above, by d: mgrpo seed 0 puts (0.8 + 0.6) / 2 = 70% of its weight at
    d = 1, unaligned seed 0 (0.5 + 0.3) / 2 = 40%; seed 1 70% and 50%. Only seed 0 kept its
    histogram of calls, so the weight per rollout pairs that seed alone, and only at the d
    both arms had rollouts of."""
    def run(variant, seed, shares, calls, histograms=None):
        curves = {"sub_weight_by_calls": shares, "train_sub_calls": calls}
        return {"variant": variant, "seed": seed, "curves": curves | ({"sub_calls_histogram": histograms}
                                                                      if histograms else {})}

    results = {"runs": [
        run("mgrpo", 0, [{"1": 0.8, "2": 0.2}, {"1": 0.6, "3": 0.4}], [1.0, 2.0], [{"1": 6, "2": 2}, {"1": 4, "3": 4}]),
        run("mgrpo", 1, [{"1": 0.7, "2": 0.3}, {}, {"1": 0.7, "4": 0.3}], [1.0, 0.0, 1.0]),
        run("unaligned", 0, [{"1": 0.5, "2": 0.5}, {"1": 0.3, "2": 0.4, "3": 0.3}], [2.0, 3.0],
            [{"1": 2, "2": 1}, {"1": 3, "2": 2, "3": 1}]),
        run("unaligned", 1, [{"1": 0.5, "2": 0.5}, {"1": 0.5, "2": 0.5}], [2.0, 2.0])]}
    rows = {r["calls"]: r for r in compare_tables.alignment_weights(results)["by_calls"]}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[1]["share"] == {"unaligned": pytest.approx([40.0, 50.0]), "mgrpo": pytest.approx([70.0, 70.0])}
    assert rows[1]["share_difference"]["mean"] == pytest.approx(-25.0)
    assert rows[2]["share_difference"]["mean"] == pytest.approx(35.0)  # (45 + 50) / 2 - (10 + 15) / 2
    assert rows[4]["share"] == {"unaligned": [0.0, 0.0], "mgrpo": pytest.approx([0.0, 15.0])}
    # per rollout, seed 0: mgrpo d = 1: (0.8 / 0.75 + 0.6 / 0.5) / 2; unaligned (0.5 / (2/3) + 0.3 / 0.5) / 2
    assert rows[1]["rollout_seeds"] == [0]
    assert rows[1]["per_rollout"] == {"unaligned": [pytest.approx(0.675)], "mgrpo": [pytest.approx((16 / 15 + 1.2) / 2)]}
    assert rows[3]["per_rollout"] == {"unaligned": [pytest.approx(1.8)], "mgrpo": [pytest.approx(0.8)]}
    assert rows[4]["per_rollout"] is None and rows[4]["rollout_seeds"] == []  # mgrpo seed 0 had no d = 4
    md = compare_tables.alignment_table(compare_tables.alignment_weights(results))
    assert "| 1 | 2 | 70.0 | 45.0 | -25.0 |" in md and "| 2 | 2 | 12.5 | 47.5 | +35.0 |" in md
    assert "| 2 | 1 | 0.80 | 1.35 | +0.55 | [-inf, +inf] | 1 | no measurable difference" in md


def test_weight_per_rollout_divides_the_weight_share_by_the_rollout_share():
    """Step 1: 2 of the 4 rollouts with calls made one, and carry 25% of the weight: 0.5 each
    against the average rollout; the two with two calls 1.5. Step 2 has no sub trajectory;
    step 3's four rollouts all made one call and carry it all: 1.0."""
    shares = [{"1": 0.25, "2": 0.75}, {}, {"1": 1.0}]
    histograms = [{"0": 3, "1": 2, "2": 2}, {"0": 4}, {"1": 4}]
    assert compare_tables.weight_per_rollout(shares, histograms) == {1: pytest.approx(0.75), 2: pytest.approx(1.5)}
    assert compare_tables.weight_per_rollout(shares, [None, None, None]) is None  # not kept: nothing to pair
    assert compare_tables.weight_per_rollout(shares, histograms[:2]) is None
    assert compare_tables.call_shares(shares) == {1: pytest.approx(0.625), 2: pytest.approx(0.375)}


def difference_row(variant: str, low: float, high: float, verdict: str, seeds: int = 5) -> dict:
    return {"variant": variant, "reference": "mgrpo", "decoding": "greedy", "seeds": list(range(seeds)),
            "mean": (low + high) / 2, "low": low, "high": high, "confidence": 0.95, "p_exact": 2 / 2 ** seeds,
            "verdict": verdict}


def test_conclusions_say_which_calls_stand_fall_reverse_or_are_new():
    t_alone = "no measurable difference (the t interval alone)"
    before = [difference_row("frozen_sub", -31.0, -14.0, t_alone),       # t says lower; later both do
              difference_row("unaligned", -98.0, -11.0, t_alone),        # t says lower; later no call
              difference_row("shared", -2.6, 13.3, "no measurable difference"),  # none; later a call
              difference_row("stale_sub", 1.0, 9.0, t_alone),           # t says higher; later lower
              difference_row("single_agent_3x", -90.0, -50.0, t_alone),  # not in the later comparison
              difference_row("single_agent", -60.0, -44.0, t_alone)]     # later on five seeds only
    after = [difference_row("frozen_sub", -30.0, -20.0, "frozen_sub lower", seeds=8),
             difference_row("unaligned", -4.0, 1.0, "no measurable difference", seeds=8),
             difference_row("shared", 2.0, 8.0, "shared higher", seeds=8),
             difference_row("stale_sub", -9.0, -1.0, "stale_sub lower", seeds=6),
             difference_row("single_agent", -60.0, -50.0, t_alone),
             difference_row("no_shared_fate", -1.0, 1.0, "no measurable difference", seeds=8)]
    by_t = {r["variant"]: r["outcome"] for r in compare_tables.conclusions(before, after, before_by="t")}
    assert by_t == {"frozen_sub": "stands", "unaligned": "falls", "shared": "new call", "stale_sub": "reverses",
                    "single_agent_3x": "not re-run", "single_agent": "cannot be called on 5 seeds",
                    "no_shared_fate": "stands"}
    # read by its verdicts, the earlier comparison called nothing: every later call is new
    by_both = {r["variant"]: r["outcome"] for r in compare_tables.conclusions(before, after)}
    assert by_both == {"frozen_sub": "new call", "unaligned": "stands", "shared": "new call", "stale_sub": "new call",
                       "single_agent_3x": "not re-run", "single_agent": "cannot be called on 5 seeds",
                       "no_shared_fate": "stands"}
    text = compare_tables.conclusions_table(compare_tables.conclusions(before, after, before_by="t"), "60 steps", "120 steps")
    assert text.splitlines()[0].startswith("| variant - reference | decoding | 60 steps | verdict | called | 120 steps |")
    assert ("| unaligned - mgrpo | greedy | -54.5 [-98.0, -11.0], p 0.0625 (5 seeds) | " + t_alone
            + " | lower | -1.5 [-4.0, +1.0], p 0.00781 (8 seeds) | no measurable difference | none | falls |") in text
    assert "| single_agent_3x - mgrpo | greedy | -70.0 [-90.0, -50.0], p 0.0625 (5 seeds) |" in text
    assert text.splitlines()[-1] == ("| no_shared_fate - mgrpo | greedy |  | not run | none | +0.0 [-1.0, +1.0], "
                                     "p 0.00781 (8 seeds) | no measurable difference | none | stands |")
    with pytest.raises(ValueError, match="by must be one of"):
        compare_tables.called(before[0], by="exact")


def test_the_report_option_against_an_older_comparison_writes_its_conclusions(tmp_path, capsys):
    base = ((0.1, {"1": 0.2}), (0.1, {"1": 0.2}))
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, gap in ((old, 0.05), (new, 0.0)):
        folder.mkdir()
        results = {"variants": ["mgrpo", "shared"], "sampled_temperature": 1.0, "runs": [
            run(v, s, "multi", base, ((0.1 * (s + 1) + (v == "shared") * gap, {"1": 0.5}), (0.5, {"1": 0.5})))
            for v in ("mgrpo", "shared") for s in (0, 1)]}
        (folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit):  # the older one has never been reported: no differences yet
        compare.main(["--report", str(new), "--against", str(old)])
    assert "holds no differences: run --report" in capsys.readouterr().err
    compare.main(["--report", str(old)])
    compare.main(["--report", str(new), "--against", str(old), "--against-by", "t"])
    text = (new / "differences.md").read_text()
    assert f"## Which differences of `{old / 'results.json'}` stand" in text
    assert "Its calls read from the t interval alone" in text
    assert "| variant - reference | decoding | earlier | verdict | called | this comparison |" in text
    # two seeds +5 each: a zero-width t interval calls it; the newer comparison cannot call on two seeds
    assert ("| shared - mgrpo | greedy | +5.0 [+5.0, +5.0], p 0.5 (2 seeds) | no measurable difference "
            "(the t interval alone) | higher |") in text
    assert "| no measurable difference | none | cannot be called on 2 seeds |" in text
    saved = json.loads((new / "results.json").read_text())
    assert saved["against"]["by"] == "t" and saved["conclusions"][0]["outcome"] == "cannot be called on 2 seeds"
    compare.main(["--report", str(new)])  # reported again without --against: the section stays
    assert (new / "differences.md").read_text() == text
    with pytest.raises(SystemExit):
        compare.main(["--against", str(old)])
    assert "give it with --report DIR" in capsys.readouterr().err
