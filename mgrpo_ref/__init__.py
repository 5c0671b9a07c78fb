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
    grading.py     exact and lenient answer matching
    evaluate.py    the evaluation harness (function and CLI)
    rewards.py     Eq. (R1) main reward, Eq. (R2) sub reward
    advantages.py  Eq. (1) and (2): group-relative advantages per agent
    alignment.py   fixed D_max sub slots per rollout
    objective.py   Eq. (3)-(6): the clipped token-level objective, k3 KL
    batching.py    trajectories to padded token batches with agent-only loss masks
    tokenizer.py   the BPE tokenizer with single-token protocol tags
    pretrain.py    the tiny base model, trained from scratch on demonstrations
    policy.py      a QLoRA policy: 4-bit base + LoRA, sampling and log-probs
    config.py      TrainConfig, saved as config.json in every run
    store.py       the file-backed store the agents share (SQLite, WAL)
    update.py      one agent's side of a training step
    worker.py      an agent's worker process
    train.py       the controller of the decoupled pipeline, and its CLI

Dimension letters used across the package (shape comments read ``# (B, K)``):

    B  questions in a step          K  rollouts per question
    D  sub-agent slots per rollout  N  distinct sub trajectories (flat)
    T  tokens
"""

__version__ = "0.1.0"
