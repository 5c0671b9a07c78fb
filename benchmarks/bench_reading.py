"""How well a base reads: the sub-agent's three turns, given the oracle's context.

    python benchmarks/bench_reading.py [--base data/base] [--n 120] [--temperatures 0 1]

For oracle sub-agent trajectories on two worlds (a training-range seed the default base
never saw, 100, and the held-out evaluation world, 1000), the context is cut just before
the sub-agent's <search>, <visit> and <return> turns, and the base decodes that one turn,
greedily (T = 0) and sampled (T = 1). "search" is the share that searches the task's entity,
"visit" the share that opens the right document, "return" the share that copies the right
fact out of it. A sub-task needs all three, so at T = 1 their product is roughly its
success rate. This is the measurement behind PretrainConfig.n_worlds and .demo_noise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mgrpo_ref.episode import run_episodes  # noqa: E402
from mgrpo_ref.policy import load_policy  # noqa: E402
from mgrpo_ref.scripted import ORACLE_NOISE, ScriptedAgent  # noqa: E402
from mgrpo_ref.tools import Tools  # noqa: E402
from mgrpo_ref.world import generate_questions, generate_world, world_config  # noqa: E402


def turn_accuracy(policy, contexts: list[str], tag: str, batch: int = 32) -> float:
    """Share of contexts where the policy's turn equals the oracle's turn opening with ``tag``."""
    prompts, gold = [], []
    for c in contexts:
        i = c.rfind(tag)
        prompts.append(c[:i])
        gold.append(c[i:c.index("</", i) + len(tag) + 1].strip())
    outs = [o for j in range(0, len(prompts), batch) for o in policy.act("sub", prompts[j:j + batch])]
    return sum(o.text.strip() == g for o, g in zip(outs, gold)) / len(gold)


def oracle_sub_contexts(seed: int, n: int) -> list[str]:
    """The contexts of the oracle sub-agent's first ``n`` trajectories on world ``seed``."""
    config = world_config(seed)  # the committed worlds' sizes (WORLD_SCALES)
    world = generate_world(seed, config)
    tools = Tools(world)
    oracle = ScriptedAgent(ORACLE_NOISE)
    episodes = run_episodes(generate_questions(world, n, config), lambda _: tools, {"main": oracle, "sub": oracle}, "multi")
    return [s.context for e in episodes for s in e.subs][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="data/base")
    parser.add_argument("--n", type=int, default=120, help="sub-agent trajectories per world")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling")
    args = parser.parse_args()
    policy = load_policy(args.base, quantization="none", trainable=False)
    for seed in (100, 1000):
        subs = oracle_sub_contexts(seed, args.n)
        for temperature in args.temperatures:
            policy.generator.manual_seed(args.seed)  # the same draws for every turn kind
            policy.sampling = replace(policy.sampling, temperature=temperature)
            shares = [100 * turn_accuracy(policy, subs, tag) for tag in ("<search>", "<visit>", "<return>")]
            print(f"world {seed:4d} ({len(subs)} sub-tasks), T = {temperature:g}: search {shares[0]:.1f}%  "
                  f"visit {shares[1]:.1f}%  return {shares[2]:.1f}%", flush=True)


if __name__ == "__main__":
    main()
