"""The decoupled pipeline end to end: two worker processes, the store, resume after a crash."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mgrpo_ref import rundir
from mgrpo_ref.config import TrainConfig, learning_rate
from mgrpo_ref.pretrain import SIZES, pretrain
from mgrpo_ref.store import Store
from mgrpo_ref.train import main as train_main

from helpers import alive


SMALL = ["questions_per_step=2", "rollouts=2", "d_max=2", "eval_questions=4", "eval_every=2",
         "checkpoint_every=1", "max_new_tokens=12", "microbatch=8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    pretrain(SIZES["tiny"], out, progress=False)
    return out


def train(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mgrpo_ref.train", "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_mgrpo_run_writes_store_metrics_and_checkpoints(base, tmp_path):
    run = tmp_path / "run"
    proc = train("--variant", "mgrpo", "--run-dir", str(run), f"base={base}", "steps=3", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stdout and str(run) in proc.stdout
    cfg = TrainConfig.load(run / "config.json")
    assert cfg.steps == 3 and cfg.rollouts == 2 and cfg.variant == "mgrpo"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert "eval/accuracy" in metrics[0] and "eval/accuracy" in metrics[2] and "eval/accuracy" in metrics[3]
    assert all("eval_sampled/accuracy" in metrics[i] for i in (0, 2, 3))  # greedy and T = 1 at each point
    assert "sampled, T=1" in proc.stdout
    for key in ("main/reward_mean", "main/loss", "main/clip_frac", "sub/reward_mean", "sub/loss",
                "sub/align_duplicated_frac", "time/update_wall_s", "time/store_frac", "rollout/mean_sub_calls"):
        assert key in metrics[1], key
    for learner in ("main", "sub"):  # each worker's peak memory: at least the base model it holds
        assert metrics[1][f"memory/{learner}_host_peak_mib"] > 50
    store = Store(run / "store.sqlite", readonly=True)
    assert store.last_finished_step() == 3
    assert all(len(store.rollouts(s)) == 4 for s in (1, 2, 3))
    assert {s["learner"] for s in store.learner_stats()} == {"main", "sub"}
    # what crossed between the learners' processes is scalars: every stored value is a number or a flag
    for row in store.rollouts(1):
        assert all(isinstance(v, (int, float)) for k, v in row.items() if k != "qid")
    # every metric also as TensorBoard events, at the step metrics.jsonl gives it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("main/reward_mean")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [0, 2, 3]
    assert [e.value for e in events.Scalars("eval/accuracy")] == pytest.approx([m["eval/accuracy"] for m in metrics
                                                                                if "eval/accuracy" in m])
    by_hops = [f"eval/accuracy_by_hops/{h}" for h in metrics[0]["eval/accuracy_by_hops"]]
    assert by_hops and set(by_hops) <= set(events.Tags()["scalars"])  # a dict: one scalar per entry
    ckpt = run / "checkpoints" / "step_00003"
    assert (ckpt / "controller.json").exists() and (ckpt / "main_state.pt").exists()
    # by default the newest two checkpoints are kept and nothing is recorded for the viewer
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00002", "step_00003"]
    assert not (run / "records").exists()
    # the main learner's optimiser stepped once per step (the tiny base's rewards may all be
    # equal, so its adapter may not move: that is tested with real advantages in
    # tests/test_step.py::test_clipped_update_moves_the_adapter_only_with_a_signal)
    state = torch.load(ckpt / "main_state.pt", weights_only=False)["optimizer"]["state"]
    assert state and all(int(s["step"]) == 3 for s in state.values())


def test_killed_worker_then_resume_finishes_with_a_consistent_store(base, tmp_path):
    run = tmp_path / "crash"
    args = ["--variant", "mgrpo", "--run-dir", str(run), f"base={base}", "steps=5", *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo_ref.train", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (run / "store.sqlite").exists() and (run / "workers.json").exists():
            if Store(run / "store.sqlite", readonly=True).last_finished_step() >= 2:
                break
        time.sleep(0.2)
    os.kill(json.loads((run / "workers.json").read_text())["sub"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "the sub worker" in err and "died" in err and f"--resume {run}" in err

    assert train_main(["--quiet", "--resume", str(run)]) == 0  # in this process: its workers start at once
    store = Store(run / "store.sqlite", readonly=True)
    assert store.last_finished_step() == 5
    assert [s["step"] for s in store.learner_stats("main")] == [1, 2, 3, 4, 5]  # none lost, none repeated
    assert [s["step"] for s in store.learner_stats("sub")] == [1, 2, 3, 4, 5]
    assert all(len(store.rollouts(s)) == 4 for s in range(1, 6))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]


def test_workers_exit_when_the_controller_is_killed(base, tmp_path):
    """A controller killed outright (no clean-up code runs) leaves no worker behind: each
    worker's pipe to it closes, and the worker stops serving; a fork server the workers came
    from ends too."""
    run = tmp_path / "orphans"
    args = ["--variant", "mgrpo", "--run-dir", str(run), f"base={base}", "steps=50", *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "mgrpo_ref.train", "--quiet", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "store.sqlite").exists():
        time.sleep(0.2)
    while time.time() < deadline and Store(run / "store.sqlite", readonly=True).last_finished_step() < 1:
        time.sleep(0.2)
    workers = json.loads((run / "workers.json").read_text())
    assert all(alive(pid) for pid in workers.values())
    parents = {parent_pid(pid) for pid in workers.values()} - {proc.pid}  # the fork server, if any
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 120
    while time.time() < deadline and any(alive(pid) for pid in [*workers.values(), *parents]):
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers.values()), workers
    assert not any(alive(pid) for pid in parents), parents


def parent_pid(pid: int) -> int:
    """A live process's parent, from /proc (Linux)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise ValueError(f"no PPid for process {pid}")


def test_bad_runs_are_refused_clearly(base, tmp_path, capsys):
    def refused(*args):  # the command's main in this process: its exit status and what it printed
        try:
            code = train_main(["--quiet", *args])
        except SystemExit as stop:  # refused by its argument parser
            code = stop.code
        return code, capsys.readouterr().err

    run = tmp_path / "r"
    rundir.start(run, TrainConfig(base=str(base)))  # what a run leaves before its first step
    code, err = refused("--run-dir", str(run), f"base={base}", "steps=1", *SMALL)
    assert code == 2 and "already holds a run" in err
    code, err = refused("--run-dir", str(tmp_path / "x"), "variant=solo")
    assert code == 2 and "variant='solo' is invalid: must be one of" in err
    code, err = refused("--run-dir", str(tmp_path / "y"), "stepz=3")
    assert code == 2 and "unknown config field 'stepz'" in err
    # a corrupted store is refused and left as it was
    (run / "store.sqlite").write_bytes(b"garbage" * 100)
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (run / extra).unlink(missing_ok=True)
    code, err = refused("--resume", str(run))
    assert code != 0 and "not a readable SQLite store" in err
    assert (run / "store.sqlite").read_bytes() == b"garbage" * 100


def test_config_round_trip_and_overrides():
    cfg = TrainConfig().override(["steps=7", "reward.b2=0.6", "lora.r=4", "betas=0.8,0.9"])
    assert cfg.steps == 7 and cfg.reward.b2 == 0.6 and cfg.lora.r == 4 and cfg.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown config section"):
        TrainConfig().override(["steps.x=1"])
    with pytest.raises(ValueError, match=">= 2"):
        TrainConfig(rollouts=1)
    # numbers that would train nothing or diverge are refused where they are set
    for bad, message in (("lr=0", "lr=0.0 is invalid: must be a finite number > 0"), ("lr=-1e-3", "> 0"),
                         ("top_p=0", "top_p"), ("top_p=1.5", "top_p"), ("clip_eps_low=1", r"in \[0, 1\)"),
                         ("kl_coef=-0.1", ">= 0"), ("max_grad_norm=0", "max_grad_norm"),
                         ("lr_schedule=cosine", "lr_schedule='cosine' is invalid: must be one of")):
        with pytest.raises(ValueError, match=message):
            TrainConfig().override([bad])


def test_resume_without_a_checkpoint_restarts_cleanly(base, tmp_path):
    run = tmp_path / "nockpt"
    assert train_main(["--quiet", "--run-dir", str(run), f"base={base}", "steps=2", "lr_schedule=linear", *SMALL]) == 0
    import shutil

    shutil.rmtree(run / "checkpoints")  # as if killed before the first checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "cut by a cra')  # and a last line cut mid-write
    assert train_main(["--quiet", "--resume", str(run)]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # the base evaluation once, every step once
    stats = Store(run / "store.sqlite", readonly=True).learner_stats("main")
    assert [s["step"] for s in stats] == [1, 2]
    # the linear schedule, a function of the step alone, holds across the restart
    assert [s["main/lr"] for s in stats] == pytest.approx([1e-3, 5e-4])


def test_the_sub_agent_can_have_its_own_learning_rate_and_both_warm_up(base, tmp_path):
    run = tmp_path / "per-role"
    assert train_main(["--quiet", "--run-dir", str(run), f"base={base}", "steps=2", "sub_lr=2e-4",
                       "warmup_ratio=0.75", *SMALL]) == 0
    store = Store(run / "store.sqlite", readonly=True)
    assert [s["main/lr"] for s in store.learner_stats("main")] == pytest.approx([5e-4, 1e-3])
    assert [s["sub/lr"] for s in store.learner_stats("sub")] == pytest.approx([1e-4, 2e-4])


def test_update_threads_follow_the_two_batches_sizes():
    from mgrpo_ref.worker import update_threads

    # the sub batch is D_max times the main batch: the sub gets every core, the main a share
    assert [update_threads("sub", c, 4, "slots") for c in (1, 2, 16)] == [1, 2, 16]
    assert [update_threads("main", c, 4, "slots") for c in (1, 2, 16)] == [1, 1, 3]
    assert update_threads("main", 16, 1, "slots") == 8  # D_max = 1: equal batches, equal shares
    # the distinct sub batch is about the main batch's size: half the cores each
    assert [update_threads(learner, c, 4, "distinct") for learner in ("main", "sub") for c in (1, 2, 16)] == [1, 1, 8] * 2
    # a worker that updates alone (single agent, shared adapter) uses the whole machine
    assert update_threads("single", 2, 4) == 2 and update_threads("shared", 16, 4) == 16


def test_learning_rate_schedules():
    assert [learning_rate(1e-3, "constant", s, 4) for s in (1, 4)] == [1e-3, 1e-3]
    linear = [learning_rate(1e-3, "linear", s, 4) for s in range(1, 5)]
    assert linear == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])  # first step lr, last lr / steps
    with pytest.raises(ValueError, match="step must be in 1..4"):
        learning_rate(1e-3, "linear", 5, 4)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rate(1e-3, "cosine", 1, 4)
    # a warm-up of 2 steps scales the first of them by step / 2, then leaves the schedule as it is
    assert [learning_rate(1e-3, "constant", s, 4, warmup=2) for s in range(1, 5)] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert [learning_rate(1e-3, "linear", s, 4, warmup=2) for s in range(1, 5)] == pytest.approx(
        [5e-4, 7.5e-4, 5e-4, 2.5e-4])


def test_the_held_out_questions_come_from_the_chosen_split():
    from mgrpo_ref.train import held_out_questions

    six = held_out_questions(TrainConfig())
    assert len(six) == 240 and len({q.world_seed for q in six}) == 6
    assert len({q.world_seed for q in held_out_questions(TrainConfig(eval_questions=12))}) == 6
    one = held_out_questions(TrainConfig(eval_split="eval", eval_questions=200))
    assert {q.world_seed for q in one} == {1000}
    with pytest.raises(ValueError, match="the eval_worlds split has 240 questions"):
        held_out_questions(TrainConfig(eval_questions=241))
    with pytest.raises(ValueError, match="the eval split has 200 questions"):
        held_out_questions(TrainConfig(eval_split="eval"))  # 240 by default


def test_a_run_can_train_on_questions_of_several_hops_only():
    from mgrpo_ref.checks import ConfigError
    from mgrpo_ref.train import training_pool

    everything = training_pool(TrainConfig())
    assert len(everything) == 400 and {q.n_hops for q in everything} == {1, 2, 3, 4}
    multi = training_pool(TrainConfig(min_train_hops=2))
    assert multi == [q for q in everything if q.n_hops >= 2] and len(multi) == 282
    with pytest.raises(ValueError, match="the train split has 50 questions of at least 4 hop"):
        training_pool(TrainConfig(min_train_hops=4, questions_per_step=51))
    with pytest.raises(ConfigError, match="min_train_hops"):
        TrainConfig(min_train_hops=0)


def test_a_curriculum_keeps_multi_hop_questions_for_its_first_steps_then_draws_from_all():
    """min_train_hops_steps=3: steps 1-3 draw from the multi-hop pool, steps 4-5 from the whole
    split, each exactly as a run with that pool throughout would draw at that step."""
    from mgrpo_ref.checks import ConfigError
    from mgrpo_ref.train import min_hops_at, sample_questions, training_pool

    cfg = TrainConfig(min_train_hops=2, min_train_hops_steps=3, steps=5)
    assert [min_hops_at(cfg, step) for step in range(1, 6)] == [2, 2, 2, 1, 1]
    assert [min_hops_at(TrainConfig(min_train_hops=2), step) for step in (1, 100)] == [2, 2]  # 0: every step
    multi, everything = training_pool(cfg), training_pool(cfg, 1)
    drawn = {step: sample_questions(training_pool(cfg, min_hops_at(cfg, step)), 8, 0, step) for step in range(1, 6)}
    assert all(q.n_hops >= 2 for step in (1, 2, 3) for q in drawn[step])
    assert drawn[4] == sample_questions(everything, 8, 0, 4) and drawn[2] == sample_questions(multi, 8, 0, 2)
    assert any(q.n_hops == 1 for step in (4, 5) for q in drawn[step])
    with pytest.raises(ConfigError, match="min_train_hops_steps.*needs min_train_hops > 1"):
        TrainConfig(min_train_hops_steps=3)
    with pytest.raises(ConfigError, match="min_train_hops_steps"):
        TrainConfig(min_train_hops=2, min_train_hops_steps=-1)


def test_a_stale_sub_agent_run_keeps_its_held_back_half_in_each_checkpoint(base, tmp_path):
    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.train import Trainer
    from mgrpo_ref.worker import LearnerWorker

    cfg = TrainConfig(base=str(base), steps=2, sub_staleness=1).override(SMALL)
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        trainer.run()
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["sub/trained"] for m in lines[1:]] == [False, True]  # step 1 has nothing held back yet
    assert all(m["main/trained"] for m in lines[1:])
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00002"
    held = torch.load(checkpoint / "sub_state.pt", weights_only=False)["held_back"]
    assert held is not None and len(held.old_logprobs) >= 1
    resumed = LearnerWorker("sub", cfg, tmp_path / "run", checkpoint)  # what --resume would continue from
    assert torch.equal(resumed.learner.held_back.half.batch.input_ids, held.half.batch.input_ids)
    assert torch.load(checkpoint / "main_state.pt", weights_only=False)["held_back"] is None


def test_recorded_steps_hold_what_each_learner_trained_on_and_every_checkpoint_can_be_kept(base, tmp_path):
    from mgrpo_ref import viewer
    from mgrpo_ref.rundir import checkpoints, read_jsonl
    from mgrpo_ref.train import Trainer

    cfg = TrainConfig(base=str(base), steps=3, record_steps=(1, 3), keep_checkpoints=0).override(SMALL)
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        trainer.run()
    run = tmp_path / "run"
    assert [p.name for p in checkpoints(run)] == ["step_00001", "step_00002", "step_00003"]
    assert sorted(p.name for p in (run / "records").iterdir()) == [
        "step-0001-main.json", "step-0001-sub.json", "step-0003-main.json", "step-0003-sub.json"]
    metrics = read_jsonl(run / "metrics.jsonl")[1]
    main, sub = (viewer.read_records(run, 1)[i]["trajectories"] for i in (0, 1))
    b, k = cfg.questions_per_step, cfg.rollouts
    assert [(t["question_index"], t["rollout"], t["call"]) for t in main] == [(i // k, i % k, None) for i in range(b * k)]
    assert sum(t["reward"] for t in main) / (b * k) == pytest.approx(metrics["main/reward_mean"])
    for q in range(b):  # Eq. (1): each question's advantages are centred
        assert sum(t["advantage"] for t in main if t["question_index"] == q) == pytest.approx(0, abs=1e-5)
    assert len(sub) == metrics["sub/n_trajectories"]
    assert sum(t["copies"] for t in sub) <= b * k * cfg.d_max
    for t in main + sub:  # the tokens are the trajectory, and the mask marks the agent's own turns
        assert len(t["tokens"]) == len(t["loss_mask"]) and 0 < sum(t["loss_mask"]) < len(t["tokens"])
        assert "".join(t["tokens"]).startswith("You ")
    page = viewer.question_html(viewer.read_records(run, 3), 0)
    assert page.count(">rollout ") == k


def test_a_worker_starts_with_what_it_loads_a_policy_with_already_imported():
    """Workers are forks of a fork server that imported ``worker.PRELOAD`` (torch, transformers,
    peft): a worker starts without importing them again. The server skips a module it cannot
    import without a word, so this is where a broken preload would show."""
    from mgrpo_ref import worker

    import helpers

    if worker.start_method() != "forkserver":
        pytest.skip("workers are spawned here (a GPU, or not Linux): each imports what it needs")
    with worker.process_context().Pool(1) as pool:  # the context WorkerHandle starts workers from
        assert pool.map(helpers.imported, ["mgrpo_ref.worker_imports", "peft", "transformers.modeling_utils"]) == [
            True, True, True]
        assert not pool.apply(helpers.imported, ("no_such_module",))


def test_a_run_with_a_prefix_cache_logs_what_each_step_s_rollouts_encoded_and_reused(base, tmp_path):
    """rollout/<learner>_encoded_tokens and the rest count the step's rollouts alone: step 1's
    add up to the context tokens of the same rollouts played in one process on empty caches
    (benchmarks/rollout_calls.py, seeded as the trainer seeds its workers), not to those and the
    base's evaluation before them, which used the same caches: the run's rollouts found some of
    what that evaluation kept (every conversation of a role begins with its instruction), so
    they encoded less."""
    import rollout_calls  # benchmarks/rollout_calls.py (pytest's pythonpath)

    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.train import Trainer

    cfg = TrainConfig(base=str(base), steps=2, prefix_cache_mib=16).override(SMALL + ["eval_every=1"])
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        trainer.run()
    first, second = read_jsonl(tmp_path / "run" / "metrics.jsonl")[1:]
    calls, _, _ = rollout_calls.step_rollouts(cfg)
    contexts_of = {}
    for learner in ("main", "sub"):  # (this barely trained base may not delegate: the sub's counts may be 0)
        mine = [c for c in calls if c["role"] == learner]
        contexts = contexts_of[learner] = sum(c["encoded_tokens"] + c["reused_tokens"] for c in mine)
        assert first[f"rollout/{learner}_encoded_tokens"] + first[f"rollout/{learner}_reused_tokens"] == contexts
        assert first[f"rollout/{learner}_encoded_tokens"] <= sum(c["encoded_tokens"] for c in mine)
        assert first[f"rollout/{learner}_evicted_entries"] == 0
    assert 0 < first["rollout/main_encoded_tokens"] < contexts_of["main"] and second["rollout/main_encoded_tokens"] > 0
    assert first["rollout/main_shared_rows"] > 0  # the K rollouts' first turns
