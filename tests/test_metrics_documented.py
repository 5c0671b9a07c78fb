"""Every key a training run writes to metrics.jsonl has one row in docs/training.md's metrics
table, and every row there names a key some run writes.

The keys come from runs of this code: the committed ``make train`` run, the committed
two-step runs of every variant (tests/data, which tests/test_metrics_regression.py holds to
the code), and, for what those files leave out (the memory peaks), a few seconds of each
variant's workers in this process.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "docs" / "training.md"
COMMITTED_RUNS = [ROOT / "benchmarks" / "results" / "make-train" / "metrics.jsonl",
                  *sorted((ROOT / "tests" / "data").glob("metrics-2-steps-*.jsonl"))]

PLACEHOLDERS = {"<learner>": "(?:main|sub|single|shared)", "<eval>": "(?:eval|eval_sampled)"}
"""What a placeholder of the table stands for (docs/training.md says the same in words)."""

GPU_ONLY = {"memory/<learner>_gpu_peak_mib"}
"""Documented keys that only a run on a GPU writes."""


def documented_keys(text: str) -> list[str]:
    """The keys of the table under "## Metrics": the backticked first cell of each row."""
    section = ("\n" + text).split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    keys = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1].strip()
        assert re.fullmatch(r"`[^`]+`", first), f"one key per row, in backticks: {first!r}"
        keys.append(first.strip("`"))
    return keys


def pattern(key: str) -> re.Pattern:
    """A documented key as a regex: each placeholder as the names it stands for."""
    parts = re.split("(" + "|".join(map(re.escape, PLACEHOLDERS)) + ")", key)
    return re.compile("".join(PLACEHOLDERS.get(p, re.escape(p)) for p in parts))


def undocumented(keys: set[str], documented: list[str]) -> list[str]:
    """The keys no documented row matches, sorted."""
    patterns = [pattern(d) for d in documented]
    return sorted(k for k in keys if not any(p.fullmatch(k) for p in patterns))


def committed_keys() -> set[str]:
    keys = set()
    for path in COMMITTED_RUNS:
        for line in path.read_text().splitlines():
            keys |= set(json.loads(line))
    return keys


@pytest.fixture(scope="module")
def worker_keys(tmp_path_factory) -> set[str]:
    """The keys the workers of each learner layout return for one step, run in this process
    on the committed base (the sub-agent stale, with a KL term; frozen_sub's keys are
    mgrpo's; single_agent with a prefix cache): what a worker writes, without the two-process
    pipeline's start-up."""
    from mgrpo_ref import rundir
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.step import LAYOUTS
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.worker import LearnerWorker
    from mgrpo_ref.world import load_questions

    threads = torch.get_num_threads()  # a worker sets its own; leave the test process as it was
    keys: set[str] = set()
    settings = [("mgrpo", {"sub_staleness": 1, "kl_coef": 0.1}), ("single_agent", {"prefix_cache_mib": 16}),
                ("shared", {})]
    try:
        for variant, extra in settings:
            cfg = TrainConfig(variant=variant, questions_per_step=2, rollouts=2, d_max=2, max_new_tokens=16,
                              microbatch=8, **extra)
            layout = LAYOUTS[variant]
            teacher = ScriptedAgent(TeacherNoise(), seed=0)
            agents = {role: teacher for role in layout.learners}
            episodes = run_episodes(load_questions("train")[:2], ToolsByWorld(), agents, layout.mode, rollouts=2)
            run = tmp_path_factory.mktemp(variant) / "run"
            rundir.start(run, cfg)
            for name in sorted(dict.fromkeys(layout.learners.values()), key=lambda n: n != layout.main_learner):
                worker = LearnerWorker(name, cfg, run, None)
                mine = episodes if name == layout.main_learner else [replace(e, main=None) for e in episodes]
                keys |= set(worker.train(1, mine))
                worker.store.close()
    finally:
        torch.set_num_threads(threads)
    return keys


def test_every_committed_run_key_is_documented():
    documented = documented_keys(TRAINING.read_text())
    keys = committed_keys()
    assert len(keys) > 50
    missing = undocumented(keys, documented)
    assert not missing, f"keys in the committed runs' metrics.jsonl with no row in docs/training.md: {missing}"


def test_every_key_a_worker_writes_is_documented(worker_keys):
    assert {"memory/main_host_peak_mib", "single/loss", "shared/lr", "sub/d_histogram"} <= worker_keys
    missing = undocumented(worker_keys, documented_keys(TRAINING.read_text()))
    assert not missing, f"keys a worker writes with no row in docs/training.md: {missing}"


def test_each_key_is_explained_once_and_every_row_is_a_key_a_run_writes(worker_keys):
    documented = documented_keys(TRAINING.read_text())
    assert len(documented) == len(set(documented)), "a key has two rows"
    keys = committed_keys() | worker_keys
    twice = [k for k in keys if sum(bool(pattern(d).fullmatch(k)) for d in documented) > 1]
    assert not twice, f"keys two rows explain: {twice}"
    unobserved = GPU_ONLY if not torch.cuda.is_available() else set()
    stale = [d for d in documented if d not in unobserved and not any(pattern(d).fullmatch(k) for k in keys)]
    assert not stale, f"rows of docs/training.md's metrics table that no run writes: {stale}"


def test_the_check_can_fail():
    page = ("# T\n\n## Metrics\n\n| key | meaning |\n|---|---|\n| `step` | the step |\n"
            "| `<learner>/loss` | the loss |\n| `<eval>/accuracy` | accuracy |\n\n## Next\n\n| `other/x` | y |\n")
    documented = documented_keys(page)
    assert documented == ["step", "<learner>/loss", "<eval>/accuracy"]
    keys = {"step", "main/loss", "shared/loss", "eval_sampled/accuracy", "made_up/key", "critic/loss", "eval/loss",
            "other/x"}
    assert undocumented(keys, documented) == ["critic/loss", "eval/loss", "made_up/key", "other/x"]
    with pytest.raises(AssertionError, match="one key per row"):
        documented_keys("## Metrics\n\n| `a`, `b` | two keys |\n")
