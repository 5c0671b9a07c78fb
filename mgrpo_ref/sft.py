"""A supervised warm-up for a pretrained model before M-GRPO: a LoRA adapter trained on the
teacher's demonstrations, written in the model's own chat format.

    python -m mgrpo_ref.sft --base models/SmolLM2-135M-Instruct --out runs/sft-smollm2
    python -m mgrpo_ref.train --variant mgrpo base=runs/sft-smollm2/adapter quantization=none

An instruct model has never seen our tag protocol; zero-shot it tends to answer in prose
instead of our tags, such a trajectory is format-invalid and its reward 0, and a group of
them gives reinforcement learning no signal. The
warm-up shows it the protocol: the demonstrations are the ones our tiny base learns from
(``pretrain.demonstrations``, the noisy teacher over training worlds, with the same planted
habit of answering after the first hop), each rendered through the model's chat template
(``chat.py``) and trained on the agent's own tokens only (its turns and their end-of-turn
tokens; the question, the documents and the results weigh 0). It ends with a held-out
check of format validity and accuracy, greedy, in both roles.

The adapter is saved as ``OUT/adapter``. M-GRPO continues that same adapter (``base=`` the
adapter directory: ``policy.load_policy`` loads its base and the adapter on top, trainable),
so the warm-up and RL share one set of LoRA weights, and the reference model of the KL term
stays the untouched base.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .batching import collate, encode_trajectory
from .checks import check_choice, check_int, check_number
from .cli import nonnegative_int, one_line, output_dir
from .evaluate import evaluate
from .policy import SamplingSettings, load_policy
from .pretrain import PretrainConfig, _batches, demonstrations, masked_nll, plot_losses
from .world import load_questions


@dataclass(frozen=True)
class SFTConfig:
    """Everything that decides a warm-up; saved beside the adapter as sft.json. The defaults
    of steps, batch, lr, max_tokens and demo_hasty are the warm-up chosen for SmolLM2 on the
    validation split (docs/real-model.md section 5, trial warm-up-600-steps)."""

    base: str = "models/SmolLM2-135M-Instruct"
    """The model to warm up: a local directory or a hub name."""
    quantization: str = "none"
    """"none" on a CPU (4-bit saves no time there, and its weights are unpacked to full
    precision at load anyway: ``policy.dequantize_4bit_layers``); "nf4" on a GPU."""
    seed: int = 0
    steps: int = 600
    batch_size: int = 4
    lr: float = 5e-4
    n_worlds: int = 40
    """Demonstration worlds (the teacher plays each world's questions in every role)."""
    max_tokens: int = 512
    """Longer demonstrations are left out (a few sub trajectories that read many documents)."""
    demo_hasty: float = PretrainConfig.demo_hasty
    """How often the demonstrating planner answers after the first hop of a multi-hop question
    (``PretrainConfig.demo_hasty``, as our tiny base learns from): what the warm-up teaches of
    going on, and so how often an M-GRPO rollout goes on at T = 1 (docs/real-model.md)."""
    eval_questions: int = 60
    """Held-out questions of the check at the end (the first N of ``eval_worlds``; 0: no check)."""

    def __post_init__(self):
        check_choice("quantization", self.quantization, ("nf4", "none"))
        for name in ("steps", "batch_size", "n_worlds", "max_tokens"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("eval_questions", self.eval_questions, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("demo_hasty", self.demo_hasty, low=0, high=1)


def warm_up(cfg: SFTConfig, out: Path, progress: bool = True) -> dict:
    """Train the warm-up adapter, save it to ``out/adapter`` with sft.json and loss_curve.png,
    and check it on held-out questions; returns the summary."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    policy = load_policy(cfg.base, quantization=cfg.quantization, seed=cfg.seed,
                         sampling=SamplingSettings(0.0, 1.0, 48))
    trajectories = demonstrations(PretrainConfig(seed=cfg.seed, n_worlds=cfg.n_worlds, demo_hasty=cfg.demo_hasty))
    data = [encode_trajectory(policy.render(t), policy.encode) for t in trajectories]  # in the model's format
    data = [d for d in data if len(d[0]) <= cfg.max_tokens]
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    lengths = [len(ids) for ids, _ in data]
    batches: list[list[int]] = []
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="warm-up", disable=not progress)
    loop_start = time.time()
    for step in bar:
        if not batches:
            batches = _batches(lengths, cfg.batch_size, rng)
        batch = {k: v.to(policy.device) for k, v in collate([data[i] for i in batches.pop()], policy.pad_id).items()}
        loss = masked_nll(policy.model, batch, context_weight=0.0)  # the agent's own tokens only
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")

    train_seconds = time.time() - loop_start
    out.mkdir(parents=True, exist_ok=True)
    policy.save_adapter(out / "adapter")
    plot_losses(losses, out / "loss_curve.png", title="Supervised warm-up")
    held_out = None
    if cfg.eval_questions:
        report, _ = evaluate(load_questions("eval_worlds")[:cfg.eval_questions], {"main": policy, "sub": policy},
                             progress=progress)
        held_out = {k: report[k] for k in ("accuracy", "format_valid", "sub_format_valid", "mean_sub_calls")}
    summary = {"config": asdict(cfg), "n_trajectories": len(data),
               "n_agent_tokens": int(sum(sum(m) for _, m in data)),
               "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - start, 1),
               "train_seconds": round(train_seconds, 1),
               "held_out": held_out,
               "losses": [round(x, 4) for x in losses]}
    (out / "sft.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def merge_warm_up(adapter_dir: str | Path, out: str | Path) -> Path:
    """The other way to start M-GRPO from a warm-up: its adapter merged into the base at full
    precision, written to ``out`` as a standard model directory that takes a fresh adapter
    (``base=OUT``). At full precision that model computes what base + adapter computes; in
    4-bit, the merged weights are quantised, warm-up included, and the reference of the KL
    term becomes the warmed-up model (``benchmarks/real_model_cpu.py`` measures both ways)."""
    policy = load_policy(adapter_dir, quantization="none", trainable=False, device="cpu")
    merged = policy.model.merge_and_unload()
    out = Path(out)
    merged.save_pretrained(str(out))
    policy.tokenizer.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> dict:
    """The CLI. A bad value or a missing local model is one ``error:`` line and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.sft", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=SFTConfig.base)
    parser.add_argument("--out", type=output_dir, required=True)
    parser.add_argument("--quantization", default=SFTConfig.quantization)
    parser.add_argument("--steps", type=nonnegative_int, default=SFTConfig.steps)
    parser.add_argument("--seed", type=nonnegative_int, default=SFTConfig.seed)
    parser.add_argument("--n-worlds", type=nonnegative_int, default=SFTConfig.n_worlds)
    parser.add_argument("--eval-questions", type=nonnegative_int, default=SFTConfig.eval_questions)
    parser.add_argument("--demo-hasty", type=float, default=SFTConfig.demo_hasty,
                        help="how often the demonstrating planner stops after the first hop (0 to 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        cfg = SFTConfig(base=args.base, quantization=args.quantization, steps=args.steps, seed=args.seed,
                        n_worlds=args.n_worlds, eval_questions=args.eval_questions, demo_hasty=args.demo_hasty)
        summary = warm_up(cfg, args.out, progress=not args.quiet)
    except (ValueError, OSError) as err:
        parser.error(one_line(err))
    held = summary["held_out"]
    check = ("" if held is None else f"; held-out format valid {held['format_valid']:.1%} (main), "
             f"{held['sub_format_valid']:.1%} (sub), accuracy {held['accuracy']:.1%}")
    print(f"warm-up: loss {summary['final_loss']:.3f}{check} -> {args.out / 'adapter'}")
    return summary


if __name__ == "__main__":
    main()
