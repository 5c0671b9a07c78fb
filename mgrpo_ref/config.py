"""One typed configuration for a training run, saved as ``config.json`` in its run directory.

Every [ours] decision of PAPER.md that a reader may want to change is a field here (or in
the nested configs it holds), with its reason in the docstring. Override any field from the
command line as ``key=value``, nested ones as ``reward.b2=0.6``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from .episode import Limits
from .policy import LoraSettings
from .rewards import RewardConfig

VARIANTS = ("mgrpo", "frozen_sub", "single_agent", "shared")
LR_SCHEDULES = ("constant", "linear")


def learning_rate(lr: float, schedule: str, step: int, steps: int) -> float:
    """The adapters' learning rate at training step ``step`` (1 .. steps).

    constant: ``lr`` at every step. linear: lr * (steps - step + 1) / steps, so step 1 uses
    ``lr`` and the last step lr / steps. It depends on the step alone, so a resumed run
    needs no scheduler state to continue exactly.
    """
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in 1..{steps}, got {step}")
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr * (steps - step + 1) / steps
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {schedule!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A training run of one variant (PAPER.md sections 3-6)."""

    variant: str = "mgrpo"
    """mgrpo: main and sub trained, each its own LoRA; frozen_sub: only the main agent trains;
    single_agent: one agent does every hop itself (GRPO); shared: one LoRA trained on both
    roles' data (the "one unified LLM" the paper argues against)."""
    seed: int = 0
    """Seeds question sampling, alignment and every agent's sampling, per step."""
    base: str = "data/base"
    """The base model: a local directory or a hub name."""
    quantization: str = "nf4"
    """4-bit NF4 base (QLoRA), or "none" for full precision."""
    steps: int = 100
    """Training steps."""
    questions_per_step: int = 8
    """B: questions per step, sampled from the training split."""
    rollouts: int = 8
    """K: rollouts per question (the group of the main agent's advantage); 8 in the release."""
    d_max: int = 4
    """D: sub-agent slots per rollout (notebook 03: the 95th percentile of d for the teacher)."""
    lr: float = 1e-3
    """Adam learning rate of the adapters (tiny models need far more than the release's 1e-6)."""
    lr_schedule: str = "constant"
    """"constant", or "linear": decays from ``lr`` at step 1 towards 0 after the last step
    (see ``learning_rate``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam betas, as in the release."""
    epochs: int = 1
    """Optimisation passes over each rollout batch (1: on-policy, ratio exactly 1)."""
    clip_eps_low: float = 0.2
    """Lower clip of the ratio, 1 - eps_low (release: 0.2)."""
    clip_eps_high: float = 0.28
    """Upper clip of the ratio, 1 + eps_high (release: 0.28, "clip-higher")."""
    kl_coef: float = 0.0
    """k3 KL to the reference (adapters disabled); 0 as in the release."""
    adv_eps: float = 1e-6
    """epsilon of the advantage's denominator, std + eps."""
    max_grad_norm: float = 1.0
    """Gradient clipping of each agent's adapter."""
    microbatch: int = 32
    """Sequences per forward/backward (gradients accumulate to one token-level mean)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (release: 1.0)."""
    top_p: float = 1.0
    """Nucleus threshold of rollouts."""
    max_new_tokens: int = 48
    """Tokens per turn."""
    eval_every: int = 10
    """Evaluate on the held-out world every N steps (and before the first, and after the last)."""
    eval_questions: int = 200
    """Held-out questions per evaluation (the first N of the eval split)."""
    eval_temperature: float = 0.0
    """Decoding of evaluations (metrics ``eval/...``): 0 = greedy."""
    eval_sampled_temperature: float = 1.0
    """A second evaluation at each evaluation point, sampled at this temperature (metrics
    ``eval_sampled/...``): the policy as it is trained, T = 1. 0 turns it off."""
    checkpoint_every: int = 10
    """Save both adapters, optimisers and random states every N steps (and after the last)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    reward: RewardConfig = field(default_factory=RewardConfig)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {self.variant!r}")
        for name in ("steps", "questions_per_step", "rollouts", "d_max", "epochs", "microbatch",
                     "eval_every", "checkpoint_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_temperature", "eval_sampled_temperature", "temperature", "weight_decay",
                     "clip_eps_low", "clip_eps_high", "kl_coef", "adv_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.clip_eps_low >= 1:
            raise ValueError(f"clip_eps_low must be < 1 (the ratio's lower clip is 1 - eps), got {self.clip_eps_low}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        if self.quantization not in ("nf4", "none"):
            raise ValueError(f"quantization must be 'nf4' or 'none', not {self.quantization!r}")

    # -- (de)serialisation ---------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        return _build(TrainConfig, d)

    @staticmethod
    def load(path: Path) -> "TrainConfig":
        return TrainConfig.from_dict(json.loads(Path(path).read_text()))

    def override(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings (``reward.b2=0.6`` for nested fields)."""
        d = asdict(self)
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, raw = item.split("=", 1)
            target, parts = d, key.split(".")
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    raise ValueError(f"unknown config section {part!r} in {key!r}")
                target = target[part]
            if parts[-1] not in target:
                raise ValueError(f"unknown config field {key!r}")
            target[parts[-1]] = _parse(raw, target[parts[-1]])
        return TrainConfig.from_dict(d)


def _parse(raw: str, current):
    """A value of the same type as ``current``, from a command-line string."""
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {raw!r}")
        return raw.lower() in ("true", "1")
    if isinstance(current, (int, float)):
        return type(current)(raw)
    if isinstance(current, (list, tuple)):
        return [type(current[0])(x) for x in raw.split(",")]
    return raw


def _build(cls, d: dict):
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        if is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


__all__ = ["TrainConfig", "VARIANTS", "replace"]
