"""One typed configuration for a training run, saved as ``config.json`` in its run directory.

Every [ours] decision of docs/paper.md that a reader may want to change is a field here (or in
the nested configs it holds), with its reason in the docstring. Override any field from the
command line as ``key=value``, nested ones as ``reward.b2=0.6``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from .checks import ConfigError, check_choice, check_int, check_number, check_text
from .episode import Limits
from .rewards import RewardConfig
from .store import is_database_url
from .world import SPLITS

VARIANTS = ("mgrpo", "frozen_sub", "single_agent", "shared")
LR_SCHEDULES = ("constant", "linear")
SUB_BATCHES = ("slots", "distinct")
ALIGNMENTS = ("d_max", "none")
EVAL_SPLITS = tuple(name for name in SPLITS if name != "train")
CLUSTERS = ("local", "ray")


NF4_ON_CPU = ("dequantized", "packed")
"""How a 4-bit base is held on a CPU: see ``policy.dequantize_4bit_layers``."""
DTYPES = ("float32", "bfloat16")
"""The dtypes a full-precision base can be held in: see ``policy.load_policy``."""


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter attached to every linear layer of the base."""

    r: int = 16
    """Rank of the update B @ A."""
    alpha: int = 32
    """Scale: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input (0: on-policy ratios stay exact)."""
    target_modules: str | tuple[str, ...] = "all-linear"
    """Which modules get adapters ("all-linear": every linear layer but the output head)."""

    def __post_init__(self):
        check_int("r", self.r, minimum=1)
        check_int("alpha", self.alpha, minimum=1)
        check_number("dropout", self.dropout, low=0, high=1, high_open=True)
        names = (self.target_modules,) if isinstance(self.target_modules, str) else self.target_modules
        if not isinstance(names, tuple) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError("target_modules", self.target_modules,
                              'must be "all-linear" or a tuple of module names')


def learning_rate(lr: float, schedule: str, step: int, steps: int, warmup: int = 0) -> float:
    """The adapters' learning rate at training step ``step`` (1 .. steps).

    constant: ``lr`` at every step. linear: lr * (steps - step + 1) / steps, so step 1 uses
    ``lr`` and the last step lr / steps. A warm-up of ``warmup`` steps then scales the first
    of them by step / warmup: from lr / warmup at step 1 up to the schedule's own rate at step
    ``warmup``. It depends on the step alone, so a resumed run needs no scheduler state to
    continue exactly.
    """
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps}, got {step}")
    if schedule == "constant":
        rate = lr
    elif schedule == "linear":
        rate = lr * (steps - step + 1) / steps
    else:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")
    return rate * min(1.0, step / warmup) if warmup > 0 else rate


@dataclass(frozen=True)
class TrainConfig:
    """A training run of one variant (docs/paper.md sections 3-6)."""

    variant: str = "mgrpo"
    """mgrpo: main and sub trained, each its own LoRA; frozen_sub: only the main agent trains;
    single_agent: one agent does every hop itself (GRPO); shared: one LoRA trained on both
    roles' data (a question of ours: the paper trains distinct models without testing a shared one)."""
    seed: int = 0
    """Seeds question sampling, alignment and every learner's sampling, per step."""
    base: str = "data/base"
    """The base model: a local directory or a hub name."""
    quantization: str = "nf4"
    """4-bit NF4 base (QLoRA), or "none" for full precision."""
    nf4_on_cpu: str = "dequantized"
    """On a CPU, hold the 4-bit base's weights "dequantized" once at load (the same numbers,
    faster) or "packed" in bitsandbytes' 4-bit layers (less memory): ``policy.dequantize_4bit_layers``.
    No effect on a GPU or with quantization=none."""
    dtype: str = "float32"
    """With quantization=none, the base's weights and activations in "float32" or "bfloat16"
    (half the memory; faster where the CPU multiplies bfloat16 matrices natively, AMX or
    AVX-512 BF16). The LoRA adapters, their gradients and the optimiser stay in float32, and
    log-probabilities are taken in float32. No effect with quantization=nf4."""
    steps: int = 100
    """Training steps."""
    questions_per_step: int = 8
    """B: questions per step, sampled from the training split."""
    min_train_hops: int = 1
    """Train only on questions of at least this many hops (1: the whole training split). A
    choice of ours for a base that rarely goes on to a second hop: its one-hop questions then
    teach mostly to stop (docs/real-model.md)."""
    min_train_hops_steps: int = 0
    """How many of the first steps keep ``min_train_hops``; the steps after them draw from the
    whole training split (0: every step keeps it). A curriculum of ours: first learn to go on,
    then when to stop (docs/real-model.md)."""
    rollouts: int = 8
    """K: rollouts per question (the group of the main agent's advantage); 8 in the release."""
    d_max: int = 4
    """D: sub-agent slots per rollout (notebook 03: the 95th percentile of d for the teacher)."""
    sub_staleness: int = 0
    """0: the sub-agent trains on this step's samples (on-policy) [ours]. 1: on the previous
    step's, as the authors' release does while new rollouts run [release]
    (``step.learner_update``). Only for variant mgrpo, whose sub-agent has its own adapter."""
    alignment: str = "d_max"
    """The sub-agent's batch: "d_max", aligned to D slots per rollout (docs/paper.md section 4:
    duplicate, drop, borrow, mask), or "none", an ablation: every distinct sub trajectory once,
    weight 1, however many calls a rollout made (``sub_batch`` then does not apply)."""
    sub_batch: str = "distinct"
    """How the sub-agent's aligned batch is computed: "distinct", each distinct trajectory that
    fills a slot once, its tokens weighted by its slot count, or "slots", one row per slot
    (B*K*D rows: the paper's trainer needs a fixed batch size, and this is our way to one). The two give the same
    loss and gradient (batching.distinct_batch says why; tests/test_step.py checks it), and the
    distinct batch is the faster (docs/results.md, "The sub-agent's batch")."""
    lr: float = 1e-3
    """Adam learning rate of the adapters (tiny models need far more than the release's 1e-6)."""
    lr_schedule: str = "constant"
    """"constant", or "linear": decays from ``lr`` at step 1 towards 0 after the last step
    (see ``learning_rate``)."""
    warmup_ratio: float = 0.0
    """0: none. Above 0: the learning rate rises linearly over this share of the steps, the
    first ``warmup_steps`` (rounded up), to the schedule's (``learning_rate``)."""
    sub_lr: float = 0.0
    """0: the sub-agent's learner uses ``lr`` too. Above 0: its own learning rate, under the
    same schedule and warm-up, where the sub-agent has an adapter of its own (variant mgrpo): a
    per-role learning rate, one of the candidates tried on the validation split."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas, as in the release."""
    epochs: int = 1
    """Optimisation passes over each rollout batch (1 on a fresh batch: on-policy, ratio exactly 1;
    a stale sub batch, ``sub_staleness=1``, has its ratio move even at 1)."""
    clip_eps_low: float = 0.2
    """Lower clip of the ratio, 1 - eps_low (release: 0.2)."""
    clip_eps_high: float = 0.28
    """Upper clip of the ratio, 1 + eps_high (release: 0.28, "clip-higher")."""
    kl_coef: float = 0.0
    """k3 KL to the reference (adapters disabled); 0 as in the release."""
    adv_eps: float = 1e-6
    """epsilon of the advantage's denominator, std + eps."""
    max_grad_norm: float = 1.0
    """Gradient clipping of each learner's adapter."""
    microbatch: int = 16
    """Sequences per forward/backward (gradients accumulate to one token-level mean). On a CPU,
    16 rows was faster than 32 for the tiny base (``benchmarks/bench_update.py``)."""
    microbatch_tokens: int = 0
    """0: every microbatch holds ``microbatch`` rows. Above 0: a microbatch holds as many rows
    (at most ``microbatch``) as fit in this many tokens of the padded microbatch (its rows
    times its longest row; a longer row goes alone), so that long multi-turn trajectories do
    not share one microbatch's memory. Either way the rows are taken longest first (unless
    ``share_prefix`` groups them), so that rows of similar length share a microbatch. The loss
    and gradient are the same either way (tested): only the update's memory and time change."""
    share_prefix: int = 0
    """0: off. Above 0: rows that begin with the same tokens (the K completions of one prompt,
    the rollouts of one question) share a microbatch where that saves work, and a microbatch
    whose rows all share at least this many leading tokens encodes them once: one row's
    forward pass over the prefix, its keys and values handed to every row for the rest. The
    same loss and gradient (tested); only the update's time and memory change. Not combined
    with ``activation_checkpointing`` (a cache is not kept under it): the usual pass then."""
    skip_zero_advantage: bool = False
    """False: every row of a batch takes part in the backward pass. True: rows whose advantage
    is 0 (every rollout of their group had one reward) run their forward pass without one. With
    no KL term (``kl_coef=0``) and a ratio of 1 (one epoch, a batch trained the step it was
    sampled) such a row's loss is 0 for any weights, so its gradient is 0: the same gradient up
    to float rounding, and the same statistics (the forward pass still gives their
    ``sampled_nll``; tested). Otherwise it does nothing. Only the update's time changes."""
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input in the update's forward pass and recompute the
    layer during the backward pass: much less memory for long rows, at the cost of a second
    forward pass. The same loss and gradient (tested). Generation is not affected."""
    prefix_cache_mib: int = 0
    """0: every turn is generated from its whole context, encoded anew. Above 0: each
    conversation's keys and values are kept from one turn to the next, in at most this many
    MiB per learner, and only the tokens past a kept prefix are encoded (prefix_cache.py).
    The same turns up to float rounding (tested); generation takes less time, and the
    cache this memory."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (release: 1.0)."""
    top_p: float = 1.0
    """Nucleus threshold of rollouts."""
    max_new_tokens: int = 48
    """Tokens per turn."""
    eval_every: int = 10
    """Evaluate on the held-out world every N steps (and before the first, and after the last)."""
    eval_split: str = "eval_worlds"
    """The held-out questions: "eval_worlds" (six worlds of both sizes, 40 questions each; the
    reports give accuracy per world) or "eval" (one default-size world, 200 questions)."""
    eval_questions: int = 240
    """Held-out questions per evaluation (the first N of ``eval_split``; its worlds take turns,
    so any N spans them all)."""
    eval_temperature: float = 0.0
    """Decoding of evaluations (metrics ``eval/...``): 0 = greedy."""
    eval_sampled_temperature: float = 1.0
    """A second evaluation at each evaluation point, sampled at this temperature (metrics
    ``eval_sampled/...``): the policy as it is trained, T = 1. 0 turns it off."""
    checkpoint_every: int = 10
    """Save both adapters, optimisers and random states every N steps (and after the last)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints a run keeps; 0 keeps them all (to probe how a run's
    decisions moved: ``probes.py``)."""
    record_steps: tuple[int, ...] = ()
    """Steps whose trajectories each worker records, with their tokens, loss masks, rewards and
    advantages, for the rollout viewer (``viewer.py``, ``records/`` in the run directory);
    none by default, so training does no extra work."""
    tensorboard: bool = True
    """Also write every metric as TensorBoard events, in ``tensorboard/`` beside metrics.jsonl
    (needs the optional ``tensorboard`` package; without it, none are written)."""
    cluster: str = "local"
    """Where the learners' workers run: "local", one process each on this machine (worker.py),
    or "ray", one Ray actor each on its own node of a Ray cluster (cluster.py, docs/cluster.md;
    needs the optional extra ``.[cluster]``)."""
    ray_address: str = ""
    """The Ray cluster to join with cluster=ray ("": the one named by RAY_ADDRESS, else a new
    one on this machine)."""
    store: str = ""
    """Where the learners' shared store is: "" for store.sqlite in the run directory, or the
    address of a PostgreSQL database that every host reaches (``postgresql://host/dbname``;
    store_pg.py); keep passwords out of it (PGPASSWORD or ~/.pgpass)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        check_choice("variant", self.variant, VARIANTS)
        check_int("seed", self.seed, minimum=0)
        check_text("base", self.base)
        check_choice("quantization", self.quantization, ("nf4", "none"))
        check_choice("nf4_on_cpu", self.nf4_on_cpu, NF4_ON_CPU)
        check_choice("dtype", self.dtype, DTYPES)
        for name in ("steps", "questions_per_step", "d_max", "epochs", "microbatch", "max_new_tokens",
                     "eval_every", "eval_questions", "checkpoint_every"):
            check_int(name, getattr(self, name), minimum=1)
        # A group of one rollout is its own baseline: its advantage is always 0.
        check_int("rollouts", self.rollouts, minimum=2)
        for name in ("lr", "max_grad_norm"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("weight_decay", "clip_eps_high", "kl_coef", "adv_eps", "temperature", "sub_lr",
                     "eval_temperature", "eval_sampled_temperature"):
            check_number(name, getattr(self, name), low=0)
        check_number("clip_eps_low", self.clip_eps_low, low=0, high=1, high_open=True)  # 1 - eps > 0
        check_number("top_p", self.top_p, low=0, high=1, low_open=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("alignment", self.alignment, ALIGNMENTS)
        check_choice("eval_split", self.eval_split, EVAL_SPLITS)
        check_choice("sub_batch", self.sub_batch, SUB_BATCHES)
        check_int("sub_staleness", self.sub_staleness, minimum=0, maximum=1)
        check_int("keep_checkpoints", self.keep_checkpoints, minimum=0)
        check_number("warmup_ratio", self.warmup_ratio, low=0, high=1, high_open=True)
        check_int("microbatch_tokens", self.microbatch_tokens, minimum=0)
        check_int("share_prefix", self.share_prefix, minimum=0)
        check_int("prefix_cache_mib", self.prefix_cache_mib, minimum=0)
        check_int("min_train_hops", self.min_train_hops, minimum=1)
        check_int("min_train_hops_steps", self.min_train_hops_steps, minimum=0)
        if self.min_train_hops_steps and self.min_train_hops == 1:  # a curriculum that would change nothing
            raise ConfigError("min_train_hops_steps", self.min_train_hops_steps, "needs min_train_hops > 1")
        check_choice("cluster", self.cluster, CLUSTERS)
        if not isinstance(self.ray_address, str) or (self.ray_address and self.cluster != "ray"):
            raise ConfigError("ray_address", self.ray_address, "is read with cluster=ray only")
        if not isinstance(self.store, str) or (self.store and not is_database_url(self.store)):
            raise ConfigError("store", self.store, 'must be "" (store.sqlite in the run directory) or a '
                              "postgresql:// address")
        if self.store and urlsplit(self.store).password:
            raise ConfigError("store", "postgresql://...", "holds a password, which config.json would keep: "
                              "give it in PGPASSWORD or ~/.pgpass instead")
        for name in ("activation_checkpointing", "skip_zero_advantage"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "must be true or false")
        if not isinstance(self.record_steps, tuple):
            raise ConfigError("record_steps", self.record_steps, "must be steps, e.g. record_steps=1,30,60")
        for step in self.record_steps:  # a step the run never reaches would record nothing, silently
            check_int("record_steps", step, minimum=1, maximum=self.steps)
        for name in ("sub_staleness", "sub_lr"):  # settings of a sub-agent's own learner
            if getattr(self, name) and self.variant != "mgrpo":
                raise ConfigError(name, getattr(self, name),
                                  "needs a sub-agent that trains its own adapter: variant=mgrpo only")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ConfigError("betas", self.betas, "must be two numbers in [0, 1), e.g. betas=0.9,0.98")
        for beta in self.betas:
            check_number("betas", beta, low=0, high=1, high_open=True)
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, getattr(self, name),
                                  f"is a section: set its fields one by one ({name}.<field>=value)")

    @property
    def warmup_steps(self) -> int:
        """How many of the first steps warm the learning rate up (``warmup_ratio``)."""
        return math.ceil(self.warmup_ratio * self.steps)

    # -- (de)serialisation ---------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        return _build(TrainConfig, d)

    @staticmethod
    def load(path: Path) -> "TrainConfig":
        """The config saved in ``path``; a ValueError naming the file if it is missing or bad."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable JSON file ({err})") from None
        except RecursionError:  # brackets nested thousands deep
            raise ValueError(f"{path}: not a readable JSON file (nested too deeply)") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields, got {type(d).__name__}")
        try:
            return TrainConfig.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def override(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings (``reward.b2=0.6`` for nested fields)."""
        d = asdict(self)
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} is not key=value")
            target, parts, cls = d, key.split("."), TrainConfig
            for part in parts[:-1]:
                if part not in SECTIONS or not isinstance(target.get(part), dict):
                    raise ValueError(f"unknown config section {part!r} in {key!r}")
                target, cls = target[part], SECTIONS[part]
            name = parts[-1]
            if name not in target:
                raise ValueError(f"unknown config field {key!r}")
            if isinstance(target[name], dict):
                raise ValueError(f"{key} is a section: set its fields one by one ({key}.<field>=value)")
            target[name] = _parse(key, raw, target[name], _field_type(cls, name))
        return TrainConfig.from_dict(d)


SECTIONS = {"lora": LoraSettings, "reward": RewardConfig, "limits": Limits}
"""The nested sections of TrainConfig, each a dataclass that checks its own fields."""


def _field_type(cls, name: str) -> str:
    return next(str(f.type) for f in fields(cls) if f.name == name)


def _parse(key: str, raw: str, current, annotation: str):
    """A value of ``current``'s type, from a command-line string; the config checks its range."""
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple) and "int" in annotation:  # record_steps=1,30,60; empty: none
            return tuple(int(x) for x in raw.split(",") if x.strip())
        if isinstance(current, tuple):
            return tuple(type(current[0])(x) for x in raw.split(","))
    except ValueError:
        if isinstance(current, tuple):
            kind = "comma-separated " + ("ints" if "int" in annotation else f"{type(current[0]).__name__}s")
        else:
            kind = {bool: "true or false", int: "an integer", float: "a number"}[type(current)]
        raise ConfigError(key, raw, f"must be {kind}") from None
    if "tuple" in annotation and "," in raw:  # a list of names, e.g. lora.target_modules=q_proj,v_proj
        return tuple(x.strip() for x in raw.split(","))
    return raw


def _build(cls, d: dict):
    """``cls`` from a dict (nested sections from nested dicts); one-line errors name the field."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown config field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    kwargs = {}
    for name, value in d.items():
        if cls is TrainConfig and name in SECTIONS and isinstance(value, dict):
            try:
                value = _build(SECTIONS[name], value)
            except ConfigError as err:
                raise err.within(name) from None
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        elif isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


__all__ = ["TrainConfig", "VARIANTS", "replace"]
