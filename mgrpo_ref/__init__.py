"""mgrpo_ref: a readable reference implementation of M-GRPO.

M-GRPO (Hong et al., arXiv 2511.13288) trains a two-level multi-agent system: a main
agent M that plans and delegates, and sub-agents S that use tools, each its own LLM,
with group-relative advantages computed per agent. See ../shared/PAPER.md and README.md.

One concept per module:

    world.py       the offline deep-research world (entities, documents, questions)
    tools.py       search and visit over a world's documents
    protocol.py    the text tags each role speaks, and a parser per role
    episode.py     the controller that runs main/sub/single-agent episodes
    scripted.py    scripted agents: an oracle and a noisy teacher
    evaluate.py    the evaluation harness (function and CLI)

Dimension letters used across the package (shape comments read ``# (B, K)``):

    B  questions in a step          K  rollouts per question
    D  sub-agent slots per rollout  N  distinct sub trajectories (flat)
    T  tokens
"""

__version__ = "0.1.0"
