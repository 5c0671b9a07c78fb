"""Where the time and memory of one training step go: by role (generation), by learner (update) and by phase.

    python benchmarks/profile_step.py [--steps 3] [--base data/base] [--no-evaluation] [key=value ...]
    python benchmarks/profile_step.py --base runs/real-model-cpu/sft/adapter --no-evaluation \
        --out benchmarks/results/profile_step_smollm2.json quantization=none questions_per_step=4 rollouts=4

Runs the config's first ``--steps`` steps in one process (``step.one_step``: each learner's
share through ``step.learner_step``, as the workers run it, but the phases run one after
another rather than overlapping as they do in the two-process pipeline), with timers around:

    generation, per role     each ``Policy.act`` call, split into
                             tokenisation (the tokenizer's encode and decode calls),
                             prefill (the first forward pass of each ``generate``),
                             decode (the later forward passes) and the rest of ``generate``
    environment              the rest of the rollouts: tools, parsing, the episode controller
    batching                 each half of step.py outside its own update (rewards, advantages,
                             alignment, encoding trajectories into batches)
    update, per learner      forward passes (``token_logprobs``), the optimiser step, and the
                             rest of ``clipped_update`` (mostly backward)
    store                    writing and reading one step's rollout rows (a temporary store)
    evaluation               one held-out evaluation of ``eval_questions`` greedily, timed once
                             (``--no-evaluation`` leaves it out)

For each phase it also reports:

* the peak resident memory of the process while the phase ran (``PeakMemory``: a thread
  reads /proc/self/statm every 2 ms and charges the reading to the innermost phase running;
  freed memory is handed back to the system at the start of the rollouts, of each generation
  call, of each half and of each update, so a phase is not charged what an earlier one left
  behind);
* the tokens it processed: real and padded tokens of each prefill, rows of each decode pass,
  real and weighted tokens of each update;
* its useful FLOPs, counted from the model's shapes by the rules of ``bench_limits.py``
  (``update_flops`` for an update; for generation the same rules, forward only, with the
  output layer on one position per row and pass), the FLOP/s achieved, and the rate this
  machine reaches on the same linear layers' matrix products alone at the phase's rows per
  pass (``bench_limits.matmul_rate``): their ratio is the phase's share of the arithmetic
  rate.

It prints a table and writes benchmarks/results/profile_step.json (``--out``). Timers add
a little overhead of their own (a clock read per forward pass).
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from bench_limits import matmul_rate, update_flops
from common import command_line, machine, parser, within_project, write_result

PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak resident memory (MiB) per phase: a daemon thread reads the process's resident
    size every ``interval`` seconds and charges it to the innermost phase running."""

    def __init__(self, interval: float = 0.002):
        self.peaks: dict[str, float] = defaultdict(float)
        self.stack = ["outside the phases"]
        self.interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def resident_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_MIB

    def _sample(self) -> None:
        while True:
            phase, now = self.stack[-1], self.resident_mib()
            if now > self.peaks[phase]:
                self.peaks[phase] = now
            time.sleep(self.interval)

    @staticmethod
    def trim() -> None:
        """Hand freed heap memory back to the system (glibc), so that the next phase starts
        from what is really in use."""
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class Clock:
    """Seconds per named phase, and counts; a timed call is also the memory's current phase."""

    def __init__(self, memory: PeakMemory):
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.memory = memory

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        self.seconds[name] += seconds
        self.counts[name] += count

    def timed(self, call, name: str, trim: bool = False):
        """``call``, its time added to ``name`` at each call, and ``name`` the memory's phase
        while it runs (``trim``: freed memory handed back first)."""

        def timed_call(*args, **kwargs):
            if trim:
                self.memory.trim()
            self.memory.stack.append(name)
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
                self.memory.stack.pop()

        return timed_call


class TimedTokenizer:
    """A tokenizer whose encode and decode calls are timed, as generation's while a role is
    generating and as batching's otherwise; everything else is forwarded."""

    def __init__(self, tokenizer, clock: Clock, generating: dict):
        self.__dict__.update(_inner=tokenizer, _clock=clock, _generating=generating)

    def _timed(self, call, *args, **kwargs):
        start = time.perf_counter()
        out = call(*args, **kwargs)
        where = "generation" if self._generating.get("role") else "batching"
        self._clock.add(f"tokenisation/{where}", time.perf_counter() - start)
        return out

    def __call__(self, *args, **kwargs):
        return self._timed(self._inner, *args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._timed(self._inner.decode, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)


def forward_flops(policy, tokens: float, attended: float, head_positions: float) -> float:
    """Useful forward FLOPs by the rules of bench_limits.py: every linear layer of the decoder
    (base and LoRA) on ``tokens`` tokens, attention over ``attended`` (the sum over tokens of
    the positions each one sees), the output layer on ``head_positions`` positions."""
    from bench_limits import linear_shapes

    config = policy.model.get_base_model().config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    linear = sum(2 * i * o for i, o, _ in linear_shapes(policy)) * tokens
    attention = 4 * heads * head_dim * config.num_hidden_layers * attended
    return linear + attention + 2 * config.hidden_size * config.vocab_size * head_positions


def watch_forward_passes(policy, clock: Clock, work: dict, generating: dict) -> None:
    """Hooks on every forward pass of the policy's model during generation: the first of a
    ``generate`` call is its prefill, the others decode steps. Each is timed, is the memory's
    phase while it runs, and adds its tokens and FLOPs to ``work``."""
    import torch

    model, state = policy.model.get_base_model(), {"start": 0.0}

    def before(module, args, kwargs):
        role = generating.get("role")
        if role is None:
            return
        kind = "prefill" if generating["calls"] == 0 else "decode"
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        rows, width = ids.shape
        if mask is None:  # no padding: every position so far is seen
            position = kwargs.get("cache_position")
            seen = int(position[-1]) + 1 if position is not None and kind == "decode" else width
            mask = torch.ones(rows, seen)
        w = work[f"generation/{role}/{kind}"]
        if kind == "prefill":
            # With a prefix cache the mask also covers the cached tokens, before the ``width`` new ones.
            seen = mask.sum(dim=1).double()  # (M,) real tokens of each context, cached or new
            new = mask[:, -width:].sum(dim=1).double()  # (M,) those encoded by this pass
            w["tokens"] += float(new.sum())
            w["padded_tokens"] += rows * width
            attended = new * (2 * seen - new + 1) / 2  # the new tokens at positions seen - new + 1 .. seen
            w["flops"] += forward_flops(policy, float(new.sum()), float(attended.sum()), rows)
        else:
            w["tokens"] += rows
            w["flops"] += forward_flops(policy, rows, float(mask.sum()), rows)
        w["passes"] += 1
        clock.memory.stack.append(f"generation/{role}/{kind}")
        state["start"] = time.perf_counter()

    def after(module, args, kwargs, output):
        role = generating.get("role")
        if role is None:
            return
        seconds = time.perf_counter() - state["start"]
        kind = "prefill" if generating["calls"] == 0 else "decode"
        generating["calls"] += 1
        clock.add(f"generation/{role}/{kind}", seconds)
        clock.memory.stack.pop()

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def main() -> None:
    options = parser("profile_step", __doc__, steps=3)
    options.add_argument("--no-evaluation", action="store_true", help="leave out the held-out evaluation")
    options.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = options.parse_args()

    import torch

    from mgrpo_ref import step as step_module
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.evaluate import evaluate
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.step import LAYOUTS, make_learner
    from mgrpo_ref.store import Store, rollout_rows
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.train import held_out_questions, sample_questions
    from mgrpo_ref.world import load_questions

    cfg = replace(TrainConfig().override(args.overrides), base=args.base)
    layout = LAYOUTS[cfg.variant]
    memory = PeakMemory()
    clock = Clock(memory)
    work: dict = defaultdict(lambda: defaultdict(float))  # phase -> tokens, padded_tokens, passes, flops
    learners = {name: make_learner(cfg.base, cfg) for name in dict.fromkeys(layout.learners.values())}
    generating: dict = {"role": None, "calls": 0}
    name_of = {}
    for name, learner in learners.items():
        policy = learner.policy
        name_of[id(policy)] = name
        policy.tokenizer = TimedTokenizer(policy.tokenizer, clock, generating)
        watch_forward_passes(policy, clock, work, generating)
        policy.token_logprobs = clock.timed(policy.token_logprobs, f"update/{name}/forward")
        learner.optimizer.step = clock.timed(learner.optimizer.step, f"update/{name}/optimiser")

    class TimedAgent:
        """The policy as an ``episode.Agent`` whose ``act`` is timed; its ``render`` (the
        model's chat format, which the episode asks for) is the policy's."""

        def __init__(self, policy):
            self.policy, self.render = policy, policy.render

        def act(self, role, contexts):
            generating.update(role=role, calls=0)
            out = clock.timed(self.policy.act, f"generation/{role}/total", trim=True)(role, contexts)
            generating["role"] = None  # counting the new tokens below is the profiler's own work
            clock.add(f"generation/{role}/new tokens", 0.0,
                      count=sum(len(self.policy.tokenizer._inner(t.text, add_special_tokens=False)["input_ids"]) for t in out))
            return out

    # The halves and updates, timed from outside (learner_step calls them from the module):
    # batching = half - nothing; update = clipped_update, per learner.
    for name in ("main_half", "sub_half"):
        setattr(step_module, name, clock.timed(getattr(step_module, name), f"batching/{name}", trim=True))
    clipped_update = step_module.clipped_update

    def counted_update(policy, optimizer, batch, cfg, **kwargs):
        name = name_of[id(policy)]
        w = work[f"update/{name}"]
        w["tokens"] += float(batch.attention_mask.sum())
        w["weighted_tokens"] += float((batch.token_weights != 0).sum())
        w["passes"] += sum(1 for _ in step_module._microbatches(batch, cfg.microbatch, cfg.microbatch_tokens))
        w["flops"] += update_flops(policy, batch)
        return clock.timed(clipped_update, f"update/{name}", trim=True)(policy, optimizer, batch, cfg, **kwargs)

    step_module.clipped_update = counted_update

    pool, tools = load_questions("train"), ToolsByWorld()
    store_dir = Path(tempfile.mkdtemp(prefix="profile-store-"))
    store = Store(store_dir / "store.sqlite", create=True)
    agents = {role: TimedAgent(learners[name].policy) for role, name in layout.learners.items()}
    memory.trim()
    time.sleep(0.05)
    loaded_mib = memory.resident_mib()  # the learners loaded, nothing run yet
    for step in range(1, args.steps + 1):
        for i, learner in enumerate(learners.values()):
            learner.policy.generator.manual_seed(step_seed(cfg.seed, step, rollout_salt(i)))
        questions = sample_questions(pool, cfg.questions_per_step, cfg.seed, step)
        episodes = clock.timed(run_episodes, "rollouts", trim=True)(questions, tools, agents, layout.mode,
                                                                    cfg.limits, rollouts=cfg.rollouts)
        clock.timed(step_module.one_step, "one_step")(episodes, learners, cfg, step)
        correct = torch.tensor([e.correct for e in episodes]).view(cfg.questions_per_step, cfg.rollouts)  # (B, K)
        rows = rollout_rows(episodes, [0.0] * len(episodes), correct, cfg.rollouts)

        def store_round_trip():
            store.write_rollouts(step, rows)
            store.wait_rollouts(step, len(rows))

        clock.timed(store_round_trip, "store")()
    store.close()
    s, counts, n = dict(clock.seconds), dict(clock.counts), args.steps  # the steps' figures, before evaluating
    evaluation_s = None
    if not args.no_evaluation:
        start = time.perf_counter()
        greedy = {name: learner.policy for name, learner in learners.items()}
        for policy in greedy.values():
            policy.sampling = replace(policy.sampling, temperature=0.0)
        evaluate(held_out_questions(cfg), {role: greedy[name] for role, name in layout.learners.items()}, layout.mode,
                 cfg.limits, batch_size=cfg.eval_questions, progress=False, tools_for=tools)
        evaluation_s = time.perf_counter() - start
    peaks = dict(memory.peaks)

    def peak(*phases: str) -> float | None:
        values = [peaks[p] for p in phases if p in peaks]
        return max(values) if values else None

    def against_the_machine(phase: str, policy, seconds: float) -> dict:
        """The phase's work, its achieved FLOP/s and the matrix products' rate at its rows per pass."""
        w = work[phase]
        if not w["passes"] or seconds <= 0:
            return {}
        rows_per_pass = max(1, round(w["tokens"] / w["passes"]))
        rate = matmul_rate(policy, rows_per_pass)
        out = {key: w[key] / n for key in ("tokens", "padded_tokens", "weighted_tokens", "passes") if key in w}
        out.update(gflop=w["flops"] / n / 1e9, achieved_gflop_s=w["flops"] / seconds / 1e9,
                   rows_per_pass=rows_per_pass, matmul_gflop_s=rate / 1e9, ratio=w["flops"] / seconds / rate)
        return out

    s = defaultdict(float, s)
    rows = []  # (label, seconds over all steps, peak MiB, work)

    def row(label, seconds, peak_mib=None, measured=None):
        rows.append((label, seconds, peak_mib, measured or {}))

    roles = sorted({k.split("/")[1] for k in s if k.startswith("generation/")})
    generation_total = sum(s[f"generation/{r}/total"] for r in roles)
    for r in roles:
        total = s[f"generation/{r}/total"]
        prefill, decode = s[f"generation/{r}/prefill"], s[f"generation/{r}/decode"]
        policy = learners[layout.learners[r]].policy
        row(f"generation, {r}", total, peak(f"generation/{r}/total", f"generation/{r}/prefill", f"generation/{r}/decode"))
        row(f"  prefill ({counts.get(f'generation/{r}/prefill', 0)} passes)", prefill, peak(f"generation/{r}/prefill"),
            against_the_machine(f"generation/{r}/prefill", policy, prefill))
        row(f"  decode ({counts.get(f'generation/{r}/decode', 0)} passes, "
            f"{counts.get(f'generation/{r}/new tokens', 0)} new tokens)", decode, peak(f"generation/{r}/decode"),
            against_the_machine(f"generation/{r}/decode", policy, decode))
        row("  the rest of generate and act", total - prefill - decode)
    row("  tokenisation inside generation (all roles)", s["tokenisation/generation"])
    row("environment (tools, parsing, episode control)", s["rollouts"] - generation_total, peak("rollouts"))
    update_total = sum(s[f"update/{name}"] for name in learners)
    batching = s["batching/main_half"] + s["batching/sub_half"]
    row("batching (rewards, advantages, alignment, encoding)", batching, peak("batching/main_half", "batching/sub_half"))
    row("  of which tokenisation (encoding trajectories)", s["tokenisation/batching"])
    row("update (clipped_update, all learners)", update_total,
        peak(*[f"update/{name}{part}" for name in learners for part in ("", "/forward", "/optimiser")]))
    for name, learner in learners.items():
        phase = f"update/{name}"
        row(f"  {name}: the whole update", s[phase], peak(phase, f"{phase}/forward", f"{phase}/optimiser"),
            against_the_machine(phase, learner.policy, s[phase]))
        row(f"  {name}: forward", s[f"{phase}/forward"], peak(f"{phase}/forward"))
        row(f"  {name}: optimiser step", s[f"{phase}/optimiser"], peak(f"{phase}/optimiser"))
        row(f"  {name}: backward and the rest", s[phase] - s[f"{phase}/forward"] - s[f"{phase}/optimiser"], peak(phase))
    row("store (write and read one step's rows)", s["store"], peak("store"))
    step_total = s["rollouts"] + s["one_step"] + s["store"]
    print(f"{n} steps of B={cfg.questions_per_step} K={cfg.rollouts} D={cfg.d_max} sub_batch={cfg.sub_batch}, "
          f"microbatch={cfg.microbatch}, one process, {torch.get_num_threads()} threads, base {cfg.base}; "
          f"resident after loading: {loaded_mib:.0f} MiB. Per step:")
    print(f"  {'phase':62s} {'seconds':>8s} {'share':>6s} {'peak MiB':>9s} {'GFLOP/s':>8s} {'x matmul':>8s}")
    for label, seconds, peak_mib, measured in rows:
        extra = (f" {measured['achieved_gflop_s']:8.2f} {measured['ratio']:8.3f}" if measured else "")
        shown = f"{peak_mib:9.0f}" if peak_mib is not None else f"{'-':>9s}"
        print(f"  {label:62s} {seconds / n:8.3f} {100 * seconds / step_total:5.1f}% {shown}{extra}")
    print(f"  {'step (rollouts + halves and updates + store)':62s} {step_total / n:8.3f}")
    if evaluation_s is not None:
        print(f"  {'evaluation of ' + str(cfg.eval_questions) + ' questions, greedy (once)':62s} {evaluation_s:8.3f}")
    result = {"command": command_line("benchmarks/profile_step.py", sys.argv[1:]),
              "machine": machine(),
              "config": {"base": within_project(cfg.base), "questions_per_step": cfg.questions_per_step,
                         "rollouts": cfg.rollouts, "microbatch_tokens": cfg.microbatch_tokens,
                         "activation_checkpointing": cfg.activation_checkpointing, "lr": cfg.lr,
                         "d_max": cfg.d_max, "sub_batch": cfg.sub_batch, "quantization": cfg.quantization,
                         "nf4_on_cpu": cfg.nf4_on_cpu, "microbatch": cfg.microbatch,
                         "max_new_tokens": cfg.max_new_tokens},
              "steps": n,
              "resident_after_loading_mib": loaded_mib,
              "phases": [{"phase": label.strip(), "part_of_the_one_above": label.startswith(" "),
                          "seconds_per_step": seconds / n, "peak_mib": peak_mib, **measured}
                         for label, seconds, peak_mib, measured in rows],
              "step_seconds": step_total / n, "evaluation_seconds": evaluation_s,
              "raw_seconds": dict(s), "counts": counts, "peak_mib": peaks}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
