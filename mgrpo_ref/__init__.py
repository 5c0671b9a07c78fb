"""mgrpo_ref: a readable reference implementation of M-GRPO.

M-GRPO (Hong et al., arXiv 2511.13288) trains a two-level multi-agent system: a main agent
M that plans and delegates, and sub-agents S that use tools, each its own LLM, with
group-relative advantages computed per agent. See docs/paper.md (the method, summarised) and README.md.

Where to start reading: ``step.py`` holds one whole training step in data order.

One concept per module:

    world.py           the offline deep-research world (entities, documents, questions)
    tools.py           search and visit over a world's documents
    protocol.py        the text tags each role speaks, and a parser per role
    episode.py         the controller that runs main/sub/single-agent episodes
    scripted.py        scripted agents: an oracle and a noisy teacher
    grading.py         exact and lenient answer matching
    rewards.py         Eq. (R1) main reward, Eq. (R2) sub reward, per rollout
    advantages.py      Eq. (1) and (2): group-relative advantages per agent
    alignment.py       fixed D_max sub slots per rollout
    batching.py        trajectories to token batches with agent-only loss weights (PolicyBatch)
    objective.py       Eq. (3)-(6): the clipped token-level objective, k3 KL
    step.py            one M-GRPO step: each learner's share (its halves, then its update), in one place
    tokenizer.py       the BPE tokenizer with single-token protocol tags
    pretrain.py        the tiny base model, trained from scratch on demonstrations
    policy.py          a QLoRA policy: 4-bit base + LoRA, sampling and log-probs
    prefix_cache.py    generation that keeps each conversation's keys and values between turns
    getmodel.py        a real instruct model (SmolLM2-135M-Instruct) from a wheel, as a model directory
    chat.py            the protocol inside an instruct model's chat template (segments, loss mask)
    sft.py             a supervised warm-up (LoRA on the teacher's demonstrations) for a pretrained model
    checks.py          one-line errors for bad configuration values
    config.py          TrainConfig, saved as config.json in every run
    seeding.py         per-step seeds and their named salts
    store.py           the file-backed store the learners share (SQLite, WAL), and its row format
    store_pg.py        the same store in a PostgreSQL database, for learners on several hosts
    worker.py          a learner's worker process, and the controller's handle on it
    worker_imports.py  what the fork server that starts workers imports once, quietly
    cluster.py         each learner's worker a Ray actor on a node of its own (cluster=ray)
    rundir.py          a run directory: config, metrics, checkpoints, resume
    train.py           the training loop of the decoupled pipeline, and its CLI
    evaluate.py        the evaluation harness (function and CLI)
    compare.py         M-GRPO against its baselines, several seeds, one budget: runs the arms
    compare_tables.py  the comparison's statistics and tables (differences, stability)
    compare_plots.py   the comparison's figures (accuracy, runs, differences)
    intervals.py       paired differences with t intervals; an accuracy with its Wilson interval
    probes.py          P(<delegate>) against P(<answer>) after the first result, per checkpoint
    viewer.py          one question's rollouts token by token, coloured by advantage (HTML)
    diagnosis.py       what moves before a run collapses: format loss, the steps before, heavy tokens
    cli.py             argument types shared by the command-line tools
    course.py          for the notebooks: the package's lines beside each equation, exercise checks

Glossary: one letter per dimension (B questions, K rollouts, D slots, N distinct sub
trajectories, M batch rows, T tokens) and one name per quantity, the same in shape comments
(``# (B, K)``), docstrings, config fields and notebooks: docs/glossary.md.
"""

__version__ = "0.1.0"
