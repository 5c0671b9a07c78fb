"""What the main agent would do next, read off its distribution rather than sampled: the
probability that its next turn opens with ``<delegate>`` (go on to the next hop) against
``<answer>`` (stop), on fixed held-out contexts, for any adapter, so that a run's checkpoints
show the decision moving as it trains.

The contexts are the main agent's view of a multi-hop question right after its first
delegation came back with the right result (``after_first_result``): the place where the
base answers too early. On these contexts the right next turn is always ``<delegate>``, since
every question has at least one hop left.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .batching import collate
from .episode import Trajectory, run_episodes
from .evaluate import make_agent
from .policy import Policy

CHOICES = ("<delegate>", "<answer>")
"""The two ways a main turn can open after a result: go on, or stop."""


def after_first_result(questions: list, tools_for) -> list[Trajectory]:
    """For each question of two hops or more, the main agent's trajectory up to its first
    result: the question, a delegation of the first hop and that hop's right answer, exactly
    as an episode writes them (played by the oracle, so the result is the right one)."""
    multi_hop = [q for q in questions if q.n_hops >= 2]
    oracle = make_agent("oracle")
    episodes = run_episodes(multi_hop, tools_for, {"main": oracle, "sub": oracle})
    contexts = []
    for e in episodes:
        first_result = next(i for i, s in enumerate(e.main.segments) if s.source == "env")
        contexts.append(replace(e.main, segments=e.main.segments[:first_result + 1], outcome="running", final=None))
    return contexts


@torch.no_grad()
def next_token_probabilities(policy: Policy, contexts: list[Trajectory], strings=CHOICES) -> torch.Tensor:
    """(M, len(strings)) the probability of each string's first token as the next token after
    each context, read in the policy's own format (chat.py). In our tokenizer every protocol
    tag is one token; in a tokenizer where a tag is several, this is the probability of its
    first token."""
    first_ids = [policy.encode(s)[0] for s in strings]
    encoded = [policy.context_ids(policy.render(c)) for c in contexts]  # as the policy continues it
    batch = collate([(ids, [0] * len(ids)) for ids in encoded], policy.pad_id)  # right-padded
    input_ids, attention_mask = batch["input_ids"].to(policy.device), batch["attention_mask"].to(policy.device)
    logits = policy.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (M, T, V)
    last = attention_mask.sum(dim=1) - 1  # (M,) the last real position of each context
    probs = logits[torch.arange(len(contexts)), last].float().softmax(dim=-1)  # (M, V)
    return probs[:, first_ids].cpu()


def probe_adapters(adapters: dict[int, str | Path], contexts: list[Trajectory], quantization: str = "nf4") -> list[dict]:
    """For each (step, adapter directory or base model), the mean probability of each choice
    over ``contexts`` and the share of contexts where ``<delegate>`` is the likelier one."""
    rows = []
    for step, path in sorted(adapters.items()):
        policy = make_agent(str(path), quantization=quantization)
        p = next_token_probabilities(policy, contexts)  # (M, 2)
        rows.append({"step": step, **{c: p[:, i].mean().item() for i, c in enumerate(CHOICES)},
                     "delegate_preferred": (p[:, 0] > p[:, 1]).float().mean().item()})
    return rows
