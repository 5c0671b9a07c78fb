"""Our GRPO step against TRL's GRPOTrainer on the same single-turn workload, in one run.

    pip install -e ".[bench]"                        # TRL and datasets: not core dependencies
    python benchmarks/bench_vs_trl.py [--steps 5] [--pairs 2]
    python benchmarks/bench_vs_trl.py --model models/SmolLM2-135M-Instruct   # a real model (make smollm2)

**The workload.** Both trainers get the same task: single-turn questions whose document is
in the prompt. Each prompt is a sub-agent's context just before its last turn (the
sub-task, the search results and the visited document, as the scripted oracle played them
on the training worlds), and the completion is the turn the policy writes there. The
reward is 1 when that turn is ``<return>X</return>`` with X an exact match of the oracle's
answer, else 0. Every step takes the next B = 8 prompts in the same order for both, K = 8
completions each (64 per step), at most 48 new tokens, temperature 1, top-p 1 (no top-k);
stop at the sub-agent's closing tags; group-relative advantages (mean and standard
deviation per prompt); one optimiser step per 64 completions (one epoch: the ratio is 1),
clip 0.2 / 0.28, no KL term, a token-level mean over the whole batch (TRL's
``loss_type="dapo"``), microbatches of 16 completions, AdamW at the default config's
learning rate, betas and weight decay, gradient clipping at its max norm.

**The model.** Both train a LoRA of rank 16 (the default ``LoraSettings``: same modules,
alpha, dropout, the same seeded initialisation) on the committed base ``data/base`` in NF4.
Both get the policy ``load_policy`` builds, so base and adapter are identical. TRL casts a
4-bit model's adapter to bf16 (following the QLoRA paper); the matched arms cast it back to
fp32, as ours is, after the trainer is built, and check it.

**Why it is fair.** Same prompts, group sizes, lengths, sampling, objective, optimiser and
model; each trainer does one process's work on every core, with nothing else running. No
multi-turn tools (TRL's trainer has none of ours), no second agent, no alignment: what is
compared is the GRPO step itself, generation and update. TRL's GRPOConfig defaults that
would do other work are set to match ours: ``gradient_checkpointing=False`` (TRL's default
recomputes activations, trading time for memory), ``bf16=False`` (fp32 on a CPU),
``beta=0`` (no reference model). Rewards: identical functions. Advantages: TRL divides by
the group's standard deviation like ours, with its own small constant.

**The arms**, each in its own process (so that its peak memory is its own), alternating,
``--pairs`` times:

    trl                 TRL's GRPOTrainer, the base in bitsandbytes' packed 4-bit layers
                        (how TRL loads a 4-bit base), the adapter in fp32
    trl, dequantized    the same on the base dequantised once (``nf4_on_cpu``)
    trl, bf16 adapter   TRL as its users get it: packed layers, its bf16 adapter
    ours                our step (``Policy.act``, ``main_advantages``, ``trajectory_batch``,
                        ``clipped_update``), the base dequantised once: our CPU default
    ours, packed        our step on the packed 4-bit layers

The matched ratios hold the base the same way on both sides: "ours, packed" against "trl",
"ours" against "trl, dequantized".

**A real model** (``--model DIR``, a local model directory or hub name): the same workload
on that model at full precision (fp32 base and adapter, how a CPU runs a real model: 4-bit is
its GPU path), in three arms, "trl, full precision", "ours, full precision" and "ours, full
precision, shared prefix": ours encoding each prompt once for its K completions, in
generation (a prefix cache, ``prefix_cache.generate``: the same episodes, tested) and in the
update (``share_prefix=32``, ``Policy.token_logprobs``: the same loss and gradient, tested),
where TRL encodes it K times. Each prompt is
the sub-agent's context rendered in the model's chat format (chat.py), as our trainer gives
it to an instruct model, and handed to TRL as that same text. Both stop a completion at the
model's end-of-turn token; ours also stops at the sub-agent's closing tags, as its rollouts
do (an instruct model ends its turn right after such a tag, so the two see about the same
tokens; new tokens/s counts what each wrote). The results go to vs_trl-<model name>.json.

The first step of each arm is a warm-up and is not timed. Each arm prints steps/s, new
tokens/s, its resident memory once the model is loaded and the trainer built (before the
first step) and at its peak; the script prints the ratios and writes
benchmarks/results/vs_trl.json. Our arms' runs also record each step's generation and update
seconds (``generation_s``, ``update_s``); TRL's trainer times only whole steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

B, K = 8, 8
FULL = "full precision"
ARMS = {"trl": ("trl", "packed"), "trl, dequantized": ("trl", "dequantized"),
        "trl, bf16 adapter": ("trl", "packed"), "ours": ("ours", "dequantized"), "ours, packed": ("ours", "packed"),
        f"trl, {FULL}": ("trl", FULL), f"ours, {FULL}": ("ours", FULL),
        f"ours, {FULL}, shared prefix": ("ours", FULL)}
"""arm -> (trainer, how its base is held: a 4-bit base dequantised or packed, or a real model in fp32)."""
SHARE_PREFIX = {f"ours, {FULL}, shared prefix": 32}
"""Arms that encode a prompt once for its K completions: arm -> the update's ``share_prefix``;
their generation keeps a prefix cache (``PREFIX_CACHE_MIB``), which encodes a context that
several rows of one call hold once."""
PREFIX_CACHE_MIB = 2048
BASE_ARMS = ("trl", "trl, dequantized", "trl, bf16 adapter", "ours", "ours, packed")
MODEL_ARMS = (f"trl, {FULL}", f"ours, {FULL}", f"ours, {FULL}, shared prefix")
MATCHED = (("ours, packed", "trl"), ("ours", "trl, dequantized"), ("ours", "trl, bf16 adapter"),
           (f"ours, {FULL}", f"trl, {FULL}"), (f"ours, {FULL}, shared prefix", f"trl, {FULL}"))
"""The ratios reported: the same layers on both sides, then each trainer as its users get it."""
INSTALL = 'TRL is not installed: pip install -e ".[bench]"  (or: pip install trl datasets)'


def workload(n: int, chat=None) -> list[tuple[str, str]]:
    """``n`` (prompt, gold answer) pairs: oracle sub-agent contexts cut before their last turn,
    in the chat format ``chat`` when given (a real instruct model's), else as plain text."""
    from mgrpo_ref.chat import render
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.scripted import ORACLE_NOISE, ScriptedAgent
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    oracle = ScriptedAgent(ORACLE_NOISE)
    episodes = run_episodes(load_questions("train")[:n], ToolsByWorld(), {"main": oracle, "sub": oracle}, "multi")
    pairs = []
    for sub in (s for e in episodes for s in e.subs):
        last = sub.segments[-1]
        assert last.source == "agent" and last.text.lstrip().startswith("<return>"), last.text
        pairs.append((render(replace(sub, segments=sub.segments[:-1]), chat).context, sub.final))
    return pairs[:n]


def reward(turn: str, gold: str) -> float:
    """1 for ``<return>gold</return>`` (exact match), else 0."""
    from mgrpo_ref.grading import exact_match
    from mgrpo_ref.protocol import parse_action

    action = parse_action("sub", turn)
    return float(getattr(action, "kind", None) == "return" and exact_match(action.argument, gold))


def load(held: str, model: str | None = None, prefix_cache_mib: float = 0):
    """The policy both trainers start from: the committed base in NF4 (``held`` dequantised or
    packed), or ``model`` at full precision; with a fresh LoRA of the default settings (and a
    prefix cache of ``prefix_cache_mib``, if above 0)."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.policy import SamplingSettings, load_policy

    cfg = TrainConfig()
    sampling = SamplingSettings(cfg.temperature, 1.0, cfg.max_new_tokens)
    if held == FULL:
        policy = load_policy(model, quantization="none", lora=cfg.lora, seed=0, sampling=sampling,
                             prefix_cache_mib=prefix_cache_mib)
    else:
        policy = load_policy(ROOT / cfg.base, quantization="nf4", lora=cfg.lora, seed=0, nf4_on_cpu=held,
                             sampling=sampling)
    return policy, cfg


def completion(policy, turn: str) -> str:
    """The turn as trained: closed by the model's end-of-turn token in a chat format (if the
    model did not write it itself), as TRL's completion ends at it."""
    chat = policy.chat
    return turn if chat is None or turn.endswith(chat.end_of_turn) else chat.agent(turn)


def run_ours(policy, cfg, steps: int, pairs: list[tuple[str, str]], share_prefix: int = 0) -> dict:
    import torch

    from mgrpo_ref.advantages import main_advantages
    from mgrpo_ref.batching import encode_trajectory, trajectory_batch
    from mgrpo_ref.episode import Segment, Trajectory
    from mgrpo_ref.step import clipped_update

    cfg = replace(cfg, epochs=1, microbatch=16, kl_coef=0.0, share_prefix=share_prefix)  # the workload's
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=tuple(cfg.betas))
    baseline_mb = peak_mb()
    times, tokens, generation, update = [], [], [], []
    for step in range(steps + 1):
        chunk = pairs[step * B:(step + 1) * B]
        start = time.perf_counter()
        contexts = [prompt for prompt, _ in chunk for _ in range(K)]  # (B*K,), prompt-major
        turns = policy.act("sub", contexts)
        generated = time.perf_counter()
        rewards = torch.tensor([reward(t.text, gold) for t, (_, gold) in zip(turns, [c for c in chunk for _ in range(K)])])
        advantages = main_advantages(rewards.view(B, K), eps=cfg.adv_eps).flatten()  # (B*K,)
        sequences = [encode_trajectory(Trajectory("sub", [Segment("prompt", c), Segment("agent", completion(policy, t.text))]),
                                       policy.encode) for c, t in zip(contexts, turns)]
        stats = clipped_update(policy, optimizer, trajectory_batch(sequences, advantages, policy.pad_id), cfg)
        if step > 0:  # step 0 warms up
            times.append(time.perf_counter() - start)
            tokens.append(sum(len(policy.encode(t.text)) for t in turns))
            generation.append(generated - start)
            update.append(stats["update_s"])
    return {"step_s": times, "new_tokens": tokens, "baseline_rss_mb": baseline_mb,
            "generation_s": generation, "update_s": update}


def run_trl(policy, cfg, steps: int, pairs: list[tuple[str, str]], fp32_adapter: bool = True) -> dict:
    import torch

    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        raise SystemExit(INSTALL)
    from mgrpo_ref.protocol import stop_strings

    model, tokenizer = policy.model, policy.tokenizer
    # Stop where Policy.act stops: at the sub-agent's closing tags (single tokens in our base),
    # or, in a chat format, at the model's end-of-turn token. TRL also ends each completion's
    # loss mask at the first of these ids.
    model.generation_config.eos_token_id = ([tokenizer.convert_tokens_to_ids(policy.chat.end_of_turn)] if policy.chat
                                            else [tokenizer.convert_tokens_to_ids(t) for t in stop_strings("sub")])
    tokens: list[int] = []

    def exact_match_reward(completions, gold, completion_ids, **_):
        tokens.append(sum(len(ids) for ids in completion_ids))
        return [reward(c, g) for c, g in zip(completions, gold)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    clock = Clock()
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-"), use_cpu=True, bf16=False, fp16=False, seed=0,
        per_device_train_batch_size=16, gradient_accumulation_steps=B * K // 16, num_generations=K,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0, top_k=0,
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.betas[0], adam_beta2=cfg.betas[1], max_grad_norm=cfg.max_grad_norm,
        beta=0.0, num_iterations=1, epsilon=cfg.clip_eps_low, epsilon_high=cfg.clip_eps_high, loss_type="dapo",
        scale_rewards="group", gradient_checkpointing=False, shuffle_dataset=False, max_steps=steps + 1,
        logging_steps=1, report_to="none", save_strategy="no", disable_dropout=True, log_completions=False)
    dataset = Dataset.from_list([{"prompt": p, "gold": g} for p, g in pairs[: (steps + 1) * B]])
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_match_reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    adapter = [p for p in trainer.model.parameters() if p.requires_grad]
    if fp32_adapter:  # undo TRL's bf16 cast of a 4-bit model's adapter (the optimiser is built in train())
        for p in adapter:
            p.data = p.data.float()
    assert {p.dtype for p in adapter} == {torch.float32 if fp32_adapter else torch.bfloat16}, {p.dtype for p in adapter}
    baseline_mb = peak_mb()
    trainer.train()
    return {"step_s": clock.times[1:], "new_tokens": tokens[1:], "baseline_rss_mb": baseline_mb}


def peak_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_arm(arm: str, steps: int, out: Path, model: str | None = None) -> None:
    """Run one arm in this process and write its figures to ``out``."""
    import torch

    trainer, held = ARMS[arm]
    policy, cfg = load(held, model, PREFIX_CACHE_MIB if arm in SHARE_PREFIX else 0)
    pairs = workload((steps + 1) * B, policy.chat)  # in the model's chat format, if it has one
    if trainer == "trl":
        result = run_trl(policy, cfg, steps, pairs, fp32_adapter=arm != "trl, bf16 adapter")
    else:
        result = run_ours(policy, cfg, steps, pairs, SHARE_PREFIX.get(arm, 0))
    result.update(arm=arm, peak_rss_mb=peak_mb(), threads=torch.get_num_threads())
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm (after one warm-up step)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--model", help="a real model (local directory or hub name), at full precision; "
                        "default: the committed base data/base in NF4")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS),
                        help=f"default: {', '.join(BASE_ARMS)}; with --model: {', '.join(MODEL_ARMS)}")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, in this process
    parser.add_argument("--arm-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/vs_trl.json, or "
                        "vs_trl-<model name>.json with --model")
    args = parser.parse_args()
    if args.arm:
        return one_arm(args.arm, args.steps, args.arm_out, args.model)
    allowed = MODEL_ARMS if args.model else BASE_ARMS
    args.arms = args.arms or list(allowed)
    if not set(args.arms) <= set(allowed):
        parser.error(f"--arms {' '.join(repr(a) for a in sorted(set(args.arms) - set(allowed)))}: "
                     f"{'only ' + ', '.join(map(repr, allowed)) + ' run a real model' if args.model else 'these need --model'}")
    name = Path(args.model.rstrip("/")).name if args.model else None
    args.out = args.out or ROOT / "benchmarks" / "results" / (f"vs_trl-{name}.json" if name else "vs_trl.json")
    try:
        import trl
    except ImportError:
        raise SystemExit(INSTALL)

    runs = []
    for pair in range(args.pairs):
        for arm in args.arms:  # alternating
            out = Path(tempfile.mkdtemp(prefix="vs-trl-")) / "arm.json"
            proc = subprocess.run([sys.executable, __file__, "--arm", arm, "--arm-out", str(out),
                                   "--steps", str(args.steps), *(["--model", args.model] if args.model else [])],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"pair {pair} {arm}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                runs.append({"pair": pair, "arm": arm, "failed": proc.stderr[-3000:]})
                continue
            run = {"pair": pair, **json.loads(out.read_text())}
            run["steps_per_s"] = len(run["step_s"]) / sum(run["step_s"])
            run["new_tokens_per_s"] = sum(run["new_tokens"]) / sum(run["step_s"])
            runs.append(run)
            print(f"pair {pair} {arm:17s}: {run['steps_per_s']:.3f} steps/s ({statistics.fmean(run['step_s']):.2f} s "
                  f"a step), {run['new_tokens_per_s']:.0f} new tokens/s, memory {run['baseline_rss_mb']:.0f} MB before "
                  f"the first step, {run['peak_rss_mb']:.0f} MB at the peak", flush=True)

    def mean(arm: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["arm"] == arm and "failed" not in r]
        return statistics.fmean(values) if values else None

    keys = ("steps_per_s", "new_tokens_per_s", "baseline_rss_mb", "peak_rss_mb")
    summary = {arm: {key: mean(arm, key) for key in keys} for arm in args.arms}
    ratios = {}
    for ours, theirs in MATCHED:
        if summary.get(ours, {}).get("steps_per_s") and summary.get(theirs, {}).get("steps_per_s"):
            ratios[f"{ours} / {theirs}"] = {key: summary[ours][key] / summary[theirs][key] for key in keys}
    command = f"python benchmarks/bench_vs_trl.py --steps {args.steps} --pairs {args.pairs}"
    if args.arms != list(allowed):
        command += " --arms " + " ".join(f"'{arm}'" for arm in args.arms)
    result = {"command": command + (f" --model {args.model}" if args.model else ""),
              "model": args.model or "data/base (NF4)",
              "machine": f"{platform.machine()}", "trl": trl.__version__,
              "workload": {"prompts_per_step": B, "completions_per_prompt": K, "timed_steps_per_arm": args.steps},
              "mean": summary, "ratios": ratios, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, r in ratios.items():
        print(f"{name}: steps/s x{r['steps_per_s']:.2f}, new tokens/s x{r['new_tokens_per_s']:.2f}, "
              f"peak memory x{r['peak_rss_mb']:.2f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
