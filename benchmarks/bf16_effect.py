"""What a bfloat16 base changes on the real model: its log-probabilities, its greedy episodes, its time.

    python benchmarks/bf16_effect.py [--base runs/real-study/warm-up/adapter] [--questions 24]

``dtype=bfloat16`` holds the base's weights and activations in bfloat16; the LoRA adapter,
its gradients and the optimiser stay in float32, and log-probabilities are taken from float32
logits (``policy.load_policy``). Unlike the prefix cache and the token budget, this lever does
not compute the same numbers, so its effect is measured here, on one adapter loaded twice (the
real-model study's warm-up by default):

1. **Log-probabilities.** The rollouts of a real step (B = 4 questions x K = 4, the float32
   policy at T = 1, ``common.real_steps``), both roles' trajectories, rendered and encoded as
   a learner trains on them; every trained token's log-probability under each dtype: the mean
   and largest absolute difference, and the share of tokens whose probability ratio between
   the two, exp(difference), falls outside the clip range [1 - clip_eps_low, 1 + clip_eps_high].
   (Training never mixes the dtypes: the old and the new log-probabilities of a step come
   from one policy. The share says how large the rounding is next to the clip.)
2. **Greedy episodes.** ``--questions`` questions of the validation split played greedily
   by each (both roles by the policy): how many transcripts are identical, each dtype's
   accuracy, and the questions one gets right and the other wrong.
3. **Time.** The same forward and backward pass over those trajectories (a learner's update,
   one microbatch per role), and the greedy episodes' generation: seconds in each dtype,
   median of ``--repeats`` for the pass.

Writes benchmarks/results/real-model-cpu/bf16_effect.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from common import ROOT, RESULTS, command_line, machine, parser, real_steps, within_project, write_result

DTYPES = ("float32", "bfloat16")


def trained_logprobs(policy, batch):
    """The log-probabilities of ``batch``'s trained tokens (weight > 0), one flat tensor."""
    import torch

    where = batch.token_weights > 0
    with torch.no_grad():
        logp = policy.token_logprobs(batch.input_ids, batch.attention_mask, where=where)
    return logp[where]


def forward_backward_s(policy, batch, repeats: int) -> float:
    """Median seconds of one forward and backward pass of the weighted log-likelihood."""
    where = batch.token_weights > 0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logp = policy.token_logprobs(batch.input_ids, batch.attention_mask, where=where)
        (logp * batch.token_weights).sum().backward()
        times.append(time.perf_counter() - start)
        for p in policy.trainable_parameters():
            p.grad = None
    return statistics.median(times)


def main() -> None:
    options = parser("bf16_effect", __doc__, repeats=3, base=False)
    options.add_argument("--base", default=str(ROOT / "runs" / "real-study" / "warm-up" / "adapter"),
                         help="an adapter or a model (default: the real-model study's warm-up)")
    options.add_argument("--questions", type=int, default=24, help="validation questions played greedily")
    options.set_defaults(out=RESULTS / "real-model-cpu" / "bf16_effect.json")
    args = options.parse_args()
    if not any((Path(args.base) / name).exists() for name in ("adapter_config.json", "config.json")):
        sys.exit(f"error: no adapter or model at {args.base}; `make real-cpu-study` writes the study's warm-up")

    import torch

    from mgrpo_ref.batching import encode_trajectory, trajectory_batch
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import transcript
    from mgrpo_ref.evaluate import evaluate
    from mgrpo_ref.policy import SamplingSettings, load_policy
    from mgrpo_ref.world import load_questions

    cfg = TrainConfig(base=args.base, quantization="none", questions_per_step=4, rollouts=4, max_new_tokens=48)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    policies = {d: load_policy(args.base, quantization="none", dtype=d, sampling=greedy) for d in DTYPES}
    sampler = load_policy(args.base, quantization="none", sampling=SamplingSettings(max_new_tokens=cfg.max_new_tokens))
    (_, episodes), = real_steps(sampler, cfg, 1)
    del sampler
    trajectories = {"main": [e.main for e in episodes], "sub": [s for e in episodes for s in e.subs]}

    result = {"command": command_line("benchmarks/bf16_effect.py", sys.argv[1:]), "base": within_project(args.base),
              "machine": machine(), "clip_range": [1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high], "logprobs": {}, "seconds": {}}
    for role, trajs in trajectories.items():
        batches = {d: trajectory_batch([encode_trajectory(p.render(t), p.encode) for t in trajs],
                                       torch.zeros(len(trajs)), p.pad_id) for d, p in policies.items()}
        lp = {d: trained_logprobs(policies[d], batches[d]) for d in DTYPES}
        diff = lp["bfloat16"] - lp["float32"]
        ratio = diff.exp()
        outside = ((ratio < 1 - cfg.clip_eps_low) | (ratio > 1 + cfg.clip_eps_high)).float().mean().item()
        result["logprobs"][role] = {"trajectories": len(trajs), "tokens": diff.numel(),
                                    "mean_abs_difference": round(diff.abs().mean().item(), 5),
                                    "max_abs_difference": round(diff.abs().max().item(), 4),
                                    "share_outside_clip": round(outside, 5)}
        result["seconds"][f"forward_backward_{role}"] = {
            d: round(forward_backward_s(policies[d], batches[d], args.repeats), 2) for d in DTYPES}
        print(role, result["logprobs"][role], result["seconds"][f"forward_backward_{role}"], flush=True)

    questions = load_questions("validation")[:args.questions]
    played, result["seconds"]["greedy_episodes"] = {}, {}
    for d, policy in policies.items():
        start = time.perf_counter()
        _, played[d] = evaluate(questions, {"main": policy, "sub": policy}, progress=False)
        result["seconds"]["greedy_episodes"][d] = round(time.perf_counter() - start, 1)
    right = {d: [e.correct for e in played[d]] for d in DTYPES}
    result["greedy"] = {
        "questions": len(questions),
        "identical_transcripts": sum(transcript(a) == transcript(b) for a, b in zip(*played.values())),
        "accuracy": {d: round(statistics.fmean(right[d]), 4) for d in DTYPES},
        "right_in_float32_only": sum(a and not b for a, b in zip(right["float32"], right["bfloat16"])),
        "right_in_bfloat16_only": sum(b and not a for a, b in zip(right["float32"], right["bfloat16"]))}
    result["ratio_bf16_to_fp32"] = {k: round(v["bfloat16"] / v["float32"], 3) for k, v in result["seconds"].items()}
    print(result["greedy"], result["ratio_bf16_to_fp32"], flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
