"""How close a step comes to what this machine can do: FLOP/s and tokens/s as ratios.

    python benchmarks/bench_limits.py [--base data/base] [--steps 2] [--repeats 2]

Two ratios, on the default config's first ``--steps`` steps played by the committed base
(``common.real_steps``):

1. **The update.** Each learner's share of each step (``step.learner_step``, through
   ``common.timed_shares``: its half, then its update, on the threads its worker gets,
   every repeat on the same adapter) is run and its update timed (the ``update_s`` of
   ``step.clipped_update``). The work is counted from
   the model's shapes and the tokens processed (the ``update_flops`` rules below) and
   divided by the time: the achieved FLOP/s. The same model's matrix products are then
   timed alone (``torch.nn.functional.linear`` at each linear layer's shape, as many rows as
   an average microbatch holds tokens, on the same threads): the FLOP/s this machine
   reaches on exactly those products. Their ratio says how much of the update's time is
   arithmetic at the machine's rate, and how much is everything else (framework overhead,
   4-bit dequantisation, softmax, memory traffic).
2. **Generation.** Every ``act`` call of the steps is recorded and replayed (``Policy.act``,
   sampling at T = 1, real stops): new tokens per second. Against it, the rate at which the
   same policy processes tokens in one forward pass (64 rows x 128 tokens, no cache, only
   the last position's logits, all cores): what decoding would reach if it were one big
   forward pass. Their ratio is decoding's share of the model's parallel speed.

Counting rules (multiply-adds count 2 FLOPs; a token's useful work only, padding excluded):
- each linear layer of the decoder, base or LoRA, on each real token: 2 * in * out forward;
  backward 2 * in * out for a frozen layer (the input's gradient only), twice that for a
  LoRA layer (the input's and the weights' gradients);
- attention, per layer and token at position t: 4 * heads * head_dim * (t + 1) forward
  (scores and weighted values over the t + 1 visible positions), twice that backward;
- the output layer on each weighted position only (``token_logprobs(where=)``):
  2 * hidden * vocab forward and the same backward (the hidden state's gradient).

Prints both and writes benchmarks/results/limits.json.
"""

from __future__ import annotations

import statistics
import time

from common import learner_and_config, machine, parser, real_steps, recording_act_calls, timed_shares, write_result


def linear_shapes(policy) -> list[tuple[int, int, bool]]:
    """(in, out, trainable) of every linear layer of the decoder: base layers and LoRA A/B."""
    import torch

    decoder = policy.model.get_base_model().get_decoder()
    shapes = []
    for module in decoder.modules():
        if isinstance(module, torch.nn.Linear):
            trainable = any(p.requires_grad for p in module.parameters(recurse=False))
            shapes.append((module.in_features, module.out_features, trainable))
    return shapes


def update_flops(policy, batch) -> float:
    """The update's useful FLOPs on ``batch`` (forward and backward), by the rules above."""
    config = policy.model.get_base_model().config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    lengths = batch.attention_mask.sum(dim=1).tolist()  # real tokens per row
    tokens = sum(lengths)
    linear = sum(2 * i * o * (1 + (2 if trainable else 1)) for i, o, trainable in linear_shapes(policy)) * tokens
    visible = sum(n * (n + 1) / 2 for n in lengths)  # sum over tokens of the positions each attends to
    attention = 4 * heads * head_dim * config.num_hidden_layers * visible * 3  # forward + twice that backward
    weighted = int((batch.token_weights != 0).sum())
    head = 2 * config.hidden_size * config.vocab_size * weighted * 2
    return linear + attention + head


def matmul_rate(policy, rows: int, repeats: int = 20) -> float:
    """FLOP/s of the decoder's linear layers' products alone, at their shapes, ``rows`` rows:
    the FLOP-weighted rate (total FLOPs over total time)."""
    import torch

    total_flops = total_s = 0.0
    for i, o, _ in set(linear_shapes(policy)):
        x, w = torch.randn(rows, i), torch.randn(o, i)
        torch.nn.functional.linear(x, w)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, w)
        seconds = (time.perf_counter() - start) / repeats
        count = sum(1 for s in linear_shapes(policy) if s[:2] == (i, o))
        total_flops += 2 * rows * i * o * count
        total_s += seconds * count
    return total_flops / total_s


def main() -> None:
    args = parser("limits", __doc__, steps=2, repeats=2).parse_args()

    import torch

    learner, cfg = learner_and_config(args.base)
    policy = learner.policy
    updates = []
    with recording_act_calls(policy) as calls:
        steps = list(real_steps(policy, cfg, args.steps))
    for step, episodes in steps:
        shares = timed_shares({"main": learner, "sub": learner}, episodes, cfg, step, args.repeats, worker_threads=True)
        for name, share in shares.items():
            (half,) = share.halves
            tokens_per_microbatch = int(half.batch.attention_mask.sum()) / -(-len(half.batch) // cfg.microbatch)
            cores = torch.get_num_threads()
            torch.set_num_threads(share.threads)  # on the update's threads
            rate = matmul_rate(policy, int(tokens_per_microbatch))
            torch.set_num_threads(cores)
            flops, seconds = update_flops(policy, half.batch), statistics.median(share.update_s)
            updates.append({"step": step, "learner": name, "threads": share.threads, "gflops": flops / 1e9,
                            "seconds": seconds, "achieved_gflop_s": flops / seconds / 1e9,
                            "matmul_gflop_s": rate / 1e9, "ratio": flops / seconds / rate})
            u = updates[-1]
            print(f"step {step} {name:4s} update: {u['gflops']:.2f} GFLOP in {seconds:.2f} s on {share.threads} "
                  f"thread(s) = {u['achieved_gflop_s']:.2f} GFLOP/s; its matmuls alone {u['matmul_gflop_s']:.1f} "
                  f"GFLOP/s (x{u['ratio']:.3f})", flush=True)

    new_tokens, start = 0, time.perf_counter()
    for role, contexts in calls:
        new_tokens += sum(len(policy.encode(t.text)) for t in policy.act(role, contexts))
    generation_s = time.perf_counter() - start
    ids = torch.randint(3, policy.model.get_base_model().config.vocab_size, (64, 128),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy.model(input_ids=ids, logits_to_keep=1)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            policy.model(input_ids=ids, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    forward_rate = ids.numel() / statistics.median(times)
    generation = {"calls": len(calls), "new_tokens": new_tokens, "seconds": generation_s,
                  "tokens_per_s": new_tokens / generation_s, "forward_tokens_per_s": forward_rate,
                  "ratio": new_tokens / generation_s / forward_rate}
    print(f"generation: {new_tokens} new tokens in {generation_s:.1f} s = {generation['tokens_per_s']:.0f} tokens/s; "
          f"one forward pass of 64 x 128 tokens: {forward_rate:.0f} tokens/s (x{generation['ratio']:.3f})")
    summary = {"command": f"python benchmarks/bench_limits.py --steps {args.steps} --repeats {args.repeats}",
               "machine": machine(),
               "config": {"questions_per_step": cfg.questions_per_step, "rollouts": cfg.rollouts, "d_max": cfg.d_max,
                          "microbatch": cfg.microbatch, "sub_batch": cfg.sub_batch, "quantization": cfg.quantization},
               "update": updates,
               "update_ratio_median": {name: statistics.median(u["ratio"] for u in updates if u["learner"] == name)
                                       for name in ("main", "sub")},
               "generation": generation}
    write_result(args.out, summary)


if __name__ == "__main__":
    main()
