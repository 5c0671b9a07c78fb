"""Build the tiny base model: a tokenizer and a small Qwen2 trained from scratch on demonstrations.

Nothing can be downloaded on our machines, so the project makes its own base model. It is
trained on the noisy teacher's demonstrations of all three roles (main, sub, single) over
training worlds only. The loss weighs the tokens the agent wrote fully and the rest of
the text (questions, documents, search results) at ``context_weight``. It learns to follow the protocol and, imperfectly, to research: room to learn.

    python -m mgrpo_ref.pretrain --out data/base          # the committed default
    python -m mgrpo_ref.pretrain --size tiny --out /tmp/b # a seconds-long smoke build

[ours] The demonstrations come from the teacher with its malformed-turn probability set to
0: a base should not be taught to break the format on purpose (it will break it on its
own, sampled at temperature 1), while its content mistakes (distractors, wrong
attributes, wrong relations, stopping early) are kept, at a tenth of their rate, and one
systematic mistake is added: the teacher's planner answers a multi-hop question after its
first hop 60% of the time (``demo_hasty``). The base learns that habit as a habit: greedily
it always stops after one hop, sampled it sometimes goes on, and reinforcement learning has a
planner's mistake to correct (docs/base-model.md, "The builds").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .batching import collate, encode_trajectory
from .checks import check_int, check_number
from .episode import run_episodes
from .policy import default_device, token_logprobs_from_logits
from .scripted import ScriptedAgent, TeacherNoise
from .tokenizer import train_tokenizer
from .tools import Tools
from .world import DATA_DIR, LARGE_SCALE, WorldConfig, check_training_seed, generate_questions, generate_world

DEMO_NOISE = replace(TeacherNoise(), malformed=0.0)
"""The teacher that writes the demonstrations: every content mistake, no malformed turns
(scaled by ``PretrainConfig.demo_noise``)."""

TEACHER_KNOBS = ("demo_noise", "demo_misread", "demo_hasty", "large_worlds")
"""The ``PretrainConfig`` fields that set the demonstrations (each >= 0; each a CLI flag)."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides the base model; saved beside it as pretrain.json."""

    seed: int = 0
    """Seeds the demonstrations' teacher, the initialisation and the batch order."""
    first_world: int = 2000
    """Demonstration worlds are seeds first_world .. first_world + n_worlds - 1 (never EVAL_SEED)."""
    n_worlds: int = 1000
    """How many training worlds the demonstrations come from. Many small worlds rather than a
    few large ones [ours]: when a world's facts recur across many demonstrations the model
    memorises them instead of reading the documents, and then fails on the unseen evaluation
    world. Measured with the same data volume and steps: 150 worlds x 60 questions copied the
    right fact from a visited document for 30% of held-out sub-tasks, 1000 x 9 for 62%."""
    questions_per_world: int = 9
    """Questions per world; each is played once in multi-agent and once in single-agent mode."""
    demo_noise: float = 0.1
    """Scales the demonstrating teacher's random content mistakes (1: ``DEMO_NOISE``). Random
    mistakes alone cannot give a base that is weak greedily yet right often enough at T = 1:
    less noise makes it sharper at T = 1 and a far better reader greedily too. Measured builds
    are in docs/base-model.md ("The builds") and benchmarks/results/base_builds.json."""
    demo_misread: float = 0.0
    """The demonstrating teacher's ``misread`` probability: a systematic misconception of three
    relations. Off: tried at 0.6 (with demo_noise 0.25), it taught the tiny model that any fact
    of a document may be the answer; it copied the right one for 34% of held-out sub-tasks."""
    demo_hasty: float = 0.6
    """The demonstrating teacher's ``hasty`` probability: its main and single agents answer a
    multi-hop question after its first hop. A planner's habit, which leaves reading intact:
    with it the base answers every multi-hop question after one hop greedily (so greedy
    accuracy is about the share of one-hop questions it reads right), while at T = 1 it goes
    on for many of them [ours]."""
    large_worlds: float = 0.01
    """Share of the demonstration worlds generated at ``large_scale`` times the default size
    (spread evenly over the seeds). Large worlds have document ids longer than any in a
    default world; a base that sees few of them copies long ids only some of the time, a
    weakness of the sub-agent's that the environment creates and that training on worlds of
    several sizes can correct (docs/base-model.md, "The builds")."""
    large_scale: int = LARGE_SCALE
    """How many times the default size a large demonstration world is (``WorldConfig.scaled``)."""
    vocab_size: int = 2048
    """BPE vocabulary (the protocol tags come on top). Large enough that most two-syllable name
    words are one token, even in the unseen evaluation world: copying a name is then copying
    one or two tokens, which a tiny model learns far sooner than long copies."""
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024
    steps: int = 3600
    """Optimiser steps."""
    context_weight: float = 0.25
    """Loss weight of the tokens the agent did not write (prompt, tool output, results); the
    agent's own tokens weigh 1. Modelling documents and search results, where every name
    recurs, teaches the copying that reading and delegating need [ours]."""
    batch_size: int = 32
    """Trajectories per step."""
    lr: float = 3e-3
    """Peak learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 100
    weight_decay: float = 0.01

    def __post_init__(self):
        check_number("demo_noise", self.demo_noise, low=0)  # a factor on the teacher's probabilities
        for name in ("demo_misread", "demo_hasty", "context_weight", "large_worlds"):
            check_number(name, getattr(self, name), low=0, high=1)
        for name in ("n_worlds", "questions_per_world", "vocab_size", "hidden_size", "intermediate_size",
                     "num_layers", "num_heads", "num_kv_heads", "max_positions", "steps", "batch_size",
                     "large_scale"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("seed", "first_world", "warmup"):
            check_int(name, getattr(self, name), minimum=0)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)


SIZES = {
    "default": PretrainConfig(),
    # A larger base for one GPU of 24 GB or less (about 26M parameters).
    "gpu": PretrainConfig(n_worlds=4000, questions_per_world=9, vocab_size=4096, hidden_size=512,
                          intermediate_size=1408, num_layers=8, num_heads=8, num_kv_heads=4,
                          steps=20000, batch_size=64, lr=1e-3, warmup=500),
    # bitsandbytes' CPU 4-bit kernels need layer inputs of at least 64 features (its block size).
    "tiny": PretrainConfig(n_worlds=4, questions_per_world=10, vocab_size=400, hidden_size=64,
                           intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1,
                           steps=20, batch_size=8),
}


def demonstrations(cfg: PretrainConfig) -> list:
    """The teacher's trajectories (main, sub and single roles) over the demonstration worlds."""
    noise = replace(DEMO_NOISE.scaled(cfg.demo_noise), misread=cfg.demo_misread, hasty=cfg.demo_hasty)
    teacher = ScriptedAgent(noise, seed=cfg.seed)
    trajectories = []
    for i, seed in enumerate(range(cfg.first_world, cfg.first_world + cfg.n_worlds)):
        large = math.floor((i + 1) * cfg.large_worlds) > math.floor(i * cfg.large_worlds)
        world_config = WorldConfig().scaled(cfg.large_scale if large else 1)
        world = generate_world(check_training_seed(seed), world_config)
        tools = Tools(world)
        questions = generate_questions(world, cfg.questions_per_world, world_config)
        for mode, agents in (("multi", {"main": teacher, "sub": teacher}), ("single", {"single": teacher})):
            for episode in run_episodes(questions, lambda _: tools, agents, mode):
                trajectories += [episode.main] + episode.subs
    return trajectories


def model_config(cfg: PretrainConfig, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar lengths (little padding), in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def masked_nll(model, batch: dict[str, torch.Tensor], context_weight: float) -> torch.Tensor:
    """Weighted mean negative log-likelihood: the agent's own tokens weigh 1, the rest
    ``context_weight`` (the first token of a sequence has no prediction and weighs 0)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = token_logprobs_from_logits(logits, batch["input_ids"])  # (M, T)
    agent = batch["loss_mask"]  # (M, T)
    weight = agent + context_weight * (batch["attention_mask"] - agent)  # (M, T)
    weight[:, 0] = 0.0
    return -(logp * weight).sum() / weight.sum().clamp(min=1)


def pretrain(cfg: PretrainConfig, out: Path, progress: bool = True) -> dict:
    """Build tokenizer and model, train, save both under ``out``; returns a summary."""
    from transformers import AutoModelForCausalLM

    start = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    trajectories = demonstrations(cfg)
    tokenizer = train_tokenizer((t.context for t in trajectories), cfg.vocab_size)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    data = [encode_trajectory(t, encode) for t in trajectories]
    data = [d for d in data if len(d[0]) <= cfg.max_positions]
    device = default_device()  # a GPU if there is one; the committed base was made on a CPU
    model = AutoModelForCausalLM.from_config(model_config(cfg, tokenizer)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress_ = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_)))

    lengths = [len(ids) for ids, _ in data]
    batches: list[list[int]] = []
    losses: list[float] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        if not batches:
            batches = _batches(lengths, cfg.batch_size, rng)
        batch = {k: v.to(device) for k, v in collate([data[i] for i in batches.pop()], tokenizer.pad_token_id).items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = masked_nll(model, batch, cfg.context_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")

    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    summary = {"config": asdict(cfg), "n_parameters": n_params, "n_trajectories": len(data),
               "n_agent_tokens": int(sum(sum(m) for _, m in data)),
               "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": round(time.time() - start, 1),
               "losses": [round(x, 4) for x in losses]}
    (out / "pretrain.json").write_text(json.dumps(summary) + "\n")
    plot_losses(losses, out / "loss_curve.png")
    return summary


def plot_losses(losses: list[float], path: Path, title: str = "Base model pretraining") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window):i + 1]) / len(losses[max(0, i - window):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, label="per step")
    ax.plot(smooth, label=f"moving mean ({window})")
    ax.set(xlabel="step", ylabel="weighted NLL per token", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """The CLI. A bad option (a negative, zero or NaN number where it makes no sense, an unknown
    --size, an --out that cannot be a directory) is one ``error:`` line and exit status 2,
    before anything is built or written. The teacher knobs need only be finite here: their
    range is ``PretrainConfig``'s own check."""
    from .cli import finite_float, nonnegative_int, one_line, output_dir, positive_int

    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=output_dir, default=DATA_DIR / "base")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--steps", type=positive_int, help="override the number of optimiser steps")
    parser.add_argument("--demo-noise", type=finite_float,
                        help="override the demonstrating teacher's noise factor (>= 0)")
    parser.add_argument("--demo-misread", type=finite_float,
                        help="override the demonstrating teacher's misread probability (>= 0)")
    parser.add_argument("--demo-hasty", type=finite_float,
                        help="override the demonstrating teacher's hasty probability (>= 0)")
    parser.add_argument("--large-worlds", type=finite_float,
                        help="override the share of demonstration worlds at 3x the default size (0-1)")
    args = parser.parse_args(argv)
    chosen = {"seed": args.seed, **({"steps": args.steps} if args.steps is not None else {}),
              **{name: getattr(args, name) for name in TEACHER_KNOBS if getattr(args, name) is not None}}
    try:  # the config's own checks
        cfg = replace(SIZES[args.size], **chosen)
    except ValueError as err:
        parser.error(one_line(err))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    summary = pretrain(cfg, args.out)
    print(f"{summary['n_parameters']:,} parameters, {summary['n_trajectories']:,} trajectories, "
          f"final loss {summary['final_loss']:.3f}, {summary['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
