"""benchmarks/bench_vs_trl.py without TRL: the workload both trainers get, in plain text and in
a chat format, the completion as trained, and the command line's refusals.

Fast: no model is loaded (a chat format is written out by hand, in SmolLM2's ChatML pieces).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bench_vs_trl  # benchmarks/bench_vs_trl.py (pytest's pythonpath)
from mgrpo_ref.chat import ChatFormat

ROOT = Path(__file__).resolve().parents[1]

CHATML = ChatFormat(before_system="<|im_start|>system\n", system_to_user="<|im_end|>\n<|im_start|>user\n",
                    user_to_assistant="<|im_end|>\n<|im_start|>assistant\n", end_of_turn="<|im_end|>",
                    assistant_to_user="\n<|im_start|>user\n")


def test_the_plain_workload_is_each_sub_agent_context_cut_before_its_returning_turn():
    pairs = bench_vs_trl.workload(12)
    assert len(pairs) == 12
    for prompt, gold in pairs:
        assert prompt.startswith("You research:") and prompt.endswith("</obs>\n") and "<return>" not in prompt
        assert gold and gold in prompt  # the oracle read its answer in the visited document


def test_the_chat_workload_is_the_same_contexts_in_the_chat_format():
    plain, chat = bench_vs_trl.workload(6), bench_vs_trl.workload(6, CHATML)
    for (p, gold), (c, chat_gold) in zip(plain, chat):
        assert gold == chat_gold
        assert c.startswith("<|im_start|>system\nYou research:") and c.endswith("<|im_start|>assistant\n")
        assert c.count("<|im_start|>assistant\n") == p.count("</search>") + p.count("</visit>") + 1  # a header per turn
        # the same text once the template's pieces are taken out
        stripped = c
        for piece in ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"):
            stripped = stripped.replace(piece, "")
        assert stripped.replace("\n", "") == p.replace("\n", "")


class _Policy:
    def __init__(self, chat):
        self.chat = chat


def test_a_completion_is_closed_by_the_end_of_turn_token_once():
    assert bench_vs_trl.completion(_Policy(None), "<return> x</return>") == "<return> x</return>"
    closed = bench_vs_trl.completion(_Policy(CHATML), "<return> x</return>")
    assert closed == "<return> x</return><|im_end|>"
    assert bench_vs_trl.completion(_Policy(CHATML), closed) == closed  # the model wrote it itself


@pytest.mark.parametrize("args, says", [
    (["--model", "models/x", "--arms", "trl"],
     "--arms 'trl': only 'trl, full precision', 'ours, full precision', 'ours, full precision, shared prefix' run a real model"),
    (["--arms", "ours, full precision"], "these need --model"),
])
def test_arms_that_do_not_fit_the_model_are_refused_in_one_line(args, says):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_vs_trl.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert says in proc.stderr.strip().splitlines()[-1]
