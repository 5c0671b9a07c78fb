"""Generation's two savings, each on and off: the draw, and the 4-bit base held unpacked.

    python benchmarks/bench_generation.py [--base data/base] [--steps 2] [--repeats 3]

1. The draw alone: one token for each of 64 rows from a softmax over the vocabulary of our
   base (2,066 tokens) and of SmolLM2 (49,152), by torch.multinomial and by
   ``policy.sample_by_inverse_cdf``, median of 200 draws.
2. Generation at equal work: every ``act`` call of the default config's first ``--steps``
   training steps (the committed base playing both roles at T = 1, ``common.real_steps``) is
   recorded, then replayed through ``generate`` with exactly ``max_new_tokens`` new tokens
   per row (stop tokens off), in four arms, alternating:

       before         ``generate(do_sample=True)`` (torch.multinomial) on bitsandbytes'
                      packed 4-bit layers: what ``Policy.act`` did before
       multinomial    the same draw through our processor (``InverseCdfSampler`` with
                      the draw patched to torch.multinomial), packed layers
       inverse cdf    our processor and draw, packed layers
       now            our processor and draw on the base dequantised once at load
                      (``nf4_on_cpu=dequantized``): what ``Policy.act`` does on a CPU

   Replaying at a fixed length makes the work equal; in real rollouts the arms draw
   different tokens, so their episodes differ in length and a per-step time mostly
   measures that difference.

Prints both and writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import statistics
import time

from common import learner_and_config, machine, parser, real_steps, recording_act_calls, write_result


def multinomial_draw(scores, generator):
    """torch.multinomial's draw: the distribution of ``sample_by_inverse_cdf``, another way."""
    import torch

    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def main() -> None:
    args = parser("generation", __doc__, steps=2, repeats=3).parse_args()

    import torch

    from mgrpo_ref import policy as policy_module

    draws = {"inverse cdf": policy_module.sample_by_inverse_cdf, "multinomial": multinomial_draw}
    alone = []
    for vocab in (2066, 49152):
        scores = torch.randn(64, vocab, generator=torch.Generator().manual_seed(0))
        median = {}
        for name, draw in draws.items():
            generator = torch.Generator().manual_seed(0)
            draw(scores, generator)
            times = []
            for _ in range(200):
                start = time.perf_counter()
                draw(scores, generator)
                times.append(time.perf_counter() - start)
            median[name] = statistics.median(times)
        alone.append({"vocab": vocab, "rows": 64, "median_ms": {k: 1e3 * v for k, v in median.items()},
                      "ratio_inverse_cdf_over_multinomial": median["inverse cdf"] / median["multinomial"]})
        print(f"one draw, 64 rows, vocabulary {vocab}: " + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in median.items()))

    learner, cfg = learner_and_config(args.base)  # the default: nf4_on_cpu=dequantized
    policy, packed = learner.policy, learner_and_config(args.base, nf4_on_cpu="packed")[0].policy
    with recording_act_calls(policy) as calls:  # the role and contexts of every act call of the steps
        for _ in real_steps(policy, cfg, args.steps):
            pass

    sampler = policy_module.InverseCdfSampler(torch.Generator().manual_seed(0))
    ours = dict(do_sample=False, logits_processor=[sampler])
    arms = {"before": (packed, dict(do_sample=True, top_k=0, temperature=cfg.temperature), draws["inverse cdf"]),
            "multinomial": (packed, ours, multinomial_draw),
            "inverse cdf": (packed, ours, draws["inverse cdf"]),
            "now": (policy, ours, draws["inverse cdf"])}
    seconds = {arm: [] for arm in arms}
    n = cfg.max_new_tokens
    with torch.no_grad():
        for _ in range(args.repeats):
            for arm, (model_of, kwargs, draw) in arms.items():  # alternating
                policy_module.sample_by_inverse_cdf = draw
                model_of.tokenizer.padding_side = "left"
                start = time.perf_counter()
                for role, contexts in calls:
                    batch = model_of.tokenizer(contexts, add_special_tokens=False, return_tensors="pt", padding=True)
                    out = model_of.model.generate(**batch, max_new_tokens=n, min_new_tokens=n,
                                                  pad_token_id=model_of.pad_id, **kwargs)
                    assert out.shape[1] == batch["input_ids"].shape[1] + n
                seconds[arm].append(time.perf_counter() - start)
                print(f"{arm:12s}: {seconds[arm][-1]:.2f} s for {len(calls)} generate calls of {n} tokens", flush=True)
    policy_module.sample_by_inverse_cdf = draws["inverse cdf"]
    median = {arm: statistics.median(s) for arm, s in seconds.items()}
    summary = {"command": f"python benchmarks/bench_generation.py --steps {args.steps} --repeats {args.repeats}",
               "machine": machine(),
               "draw_alone": alone,
               "generation": {"calls": len(calls), "rows": sum(len(c) for _, c in calls), "new_tokens_per_row": n,
                              "median_s": median, "seconds": seconds,
                              "ratio_to_before": {arm: m / median["before"] for arm, m in median.items()}}}
    print("generation at equal work, against 'before': " + ", ".join(
        f"{arm} x{r:.2f}" for arm, r in summary["generation"]["ratio_to_before"].items() if arm != "before"))
    write_result(args.out, summary)


if __name__ == "__main__":
    main()
