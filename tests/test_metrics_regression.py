"""A 2-step run logs the numbers it logged when its fixtures were written, so one seed gives one run.

``tests/data/metrics-2-steps-<variant>.jsonl`` were written with the committed base and the
config below by the code that introduced inverse-CDF sampling (``policy.sample_by_inverse_cdf``).
Every later change that is meant to move no number (a refactor, a faster update) is held to
them: counts and histograms exactly, floats to float rounding (on any CPU: the tolerance below). A change that draws other
tokens (a new sampler, new seeds) rewrites them, and says so in docs/history.md.

They ask for the slot batch (``sub_batch=slots``), the form of the first fixtures; the
default distinct batch computes the same loss and gradient from fewer rows
(tests/test_step.py), so it logs another ``sub/n_rows``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mgrpo_ref.rundir import deterministic
from mgrpo_ref.store import Store

DATA = Path(__file__).parent / "data"
CONFIG = ["steps=2", "questions_per_step=3", "rollouts=4", "d_max=2", "eval_questions=8", "eval_every=2",
          "checkpoint_every=2", "max_new_tokens=24", "microbatch=8", "sub_batch=slots"]




@pytest.mark.parametrize("variant", ["mgrpo", "frozen_sub", "single_agent", "shared"])
def test_a_two_step_run_logs_the_numbers_of_its_fixture(tmp_path, variant):
    run = tmp_path / variant
    proc = subprocess.run([sys.executable, "-m", "mgrpo_ref.train", "--quiet", "--variant", variant,
                           "--run-dir", str(run), *CONFIG], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    before = [deterministic(json.loads(line)) for line in (DATA / f"metrics-2-steps-{variant}.jsonl").read_text().splitlines()]
    now = [deterministic(json.loads(line)) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in now] == [r["step"] for r in before] == [0, 1, 2]
    for old, new in zip(before, now):
        assert sorted(old) == sorted(new)
        for key, value in old.items():
            if isinstance(value, float):
                # Float rounding differs between CPUs (the fixtures were written with AVX-512
                # kernels; an AVX2-only CPU sums in another order). A mean log-prob near 0 (a
                # sub-agent sure of its tokens) carries an absolute error of float32's epsilon
                # times the logits' scale, hence a floor of 1e-6 for that mean; every other
                # figure is held to 1e-7 (a loss whose group advantages cancel sits near 0),
                # every count exact.
                floor = 1e-6 if key.endswith("sampled_nll") else 1e-7
                assert new[key] == pytest.approx(value, rel=1e-5, abs=floor), (old["step"], key)
            else:
                assert new[key] == value, (old["step"], key)
    # The same numbers as when the fixture was written: one seed gives one run. What each
    # variant's learners are, and what they did, from the run's own files:
    learners = {"mgrpo": {"main", "sub"}, "frozen_sub": {"main", "sub"}, "single_agent": {"single"}, "shared": {"shared"}}
    store = Store(run / "store.sqlite", readonly=True)
    assert {s["learner"] for s in store.learner_stats()} == learners[variant]
    assert set(json.loads((run / "workers.json").read_text())) == learners[variant]
    if variant == "mgrpo":  # the committed base's rewards vary, so both adapters really move
        assert all(any(m.get(f"{a}/grad_norm", 0) > 0 for m in now) for a in ("main", "sub"))
    if variant == "frozen_sub":  # the sub-agent's adapter is never updated: a fresh LoRA has B = 0
        weights = load_file(run / "checkpoints" / "step_00002" / "sub" / "adapter_model.safetensors")
        assert all(w.abs().sum() == 0 for n, w in weights.items() if "lora_B" in n)
        assert not any(s["sub/trained"] for s in store.learner_stats("sub"))
    store.close()
