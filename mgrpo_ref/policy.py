"""A QLoRA policy: a frozen 4-bit base model with a trainable LoRA adapter.

docs/paper.md section 1: the main agent and the sub-agent are distinct LLMs. Here each is one
frozen base model, quantised to 4-bit NF4 by bitsandbytes, with its own LoRA adapter from
peft [ours, per the design card]. The same code loads our tiny base from ``data/base`` or
any Hugging Face causal LM from a local directory or a hub name (for example
``Qwen/Qwen2.5-0.5B-Instruct`` where the internet is available).

What a policy offers the rest of the package:

* :meth:`Policy.act` - batched sampling of one turn per context (temperature, top-p, max
  new tokens, stop at the role's closing tags), left-padded prompts of different lengths;
  each token is drawn by :func:`sample_by_inverse_cdf` from the policy's own generator;
  with a prefix cache, each conversation's keys and values are kept between its turns
  (prefix_cache.py); this is the ``Agent`` interface of ``episode.run_episodes``;
* :meth:`Policy.token_logprobs` - per-token log-probabilities of given sequences under
  the adapter, or under the reference (the same network with its adapters disabled, so no
  second copy of the base sits in memory), at every position or only where asked;
* :meth:`Policy.save_adapter` / :func:`load_policy` on an adapter directory.

Quantisation is explicit: ``quantization="nf4"`` (default) needs bitsandbytes, and when it
is not usable the error says so and names the opt-in ``quantization="none"``. There is no
silent fallback. On a CPU a 4-bit base is dequantised once at load unless asked to stay
packed (:func:`dequantize_4bit_layers`, ``nf4_on_cpu``): the same numbers, faster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .batching import encode_trajectory
from .chat import ChatFormat, chat_format, render as render_chat
from .checks import check_choice
from .config import DTYPES, NF4_ON_CPU, LoraSettings
from .episode import Turn
from .prefix_cache import PrefixCache, as_model_cache, cache_argument, cache_of, from_model_cache
from .prefix_cache import generate as generate_with_prefix_cache
from .protocol import stop_strings

ADAPTER_FILE = "adapter_config.json"


@dataclass(frozen=True)
class SamplingSettings:
    """How a turn is sampled."""

    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    max_new_tokens: int = 48
    """Tokens per turn; a turn cut here has no closing tag and parses as "unclosed"."""


def token_logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) for every position t >= 1; position 0 gets 0.

    logits (M, T, V), input_ids (M, T) -> (M, T). Aligned with the ids, so a loss mask
    over the ids (1 on the agent's own tokens) applies to the result as is.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (M, T-1, V)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (M, T-1)
    return F.pad(picked, (1, 0))  # (M, T)


def logprobs_at(hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor,
                where: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) at the positions ``where`` is True, 0 elsewhere: (M, T).

    hidden (M, T, H) is the decoder's last hidden state and ``head`` the output layer (H ->
    V). The state at t - 1 predicts the token at t, so only the states before a wanted
    position go through the head: (number of wanted positions, V) logits instead of
    (M, T, V). Position 0 has no prediction and gets 0, as in :func:`token_logprobs_from_logits`.
    """
    wanted = where[:, 1:].bool()  # (M, T-1): positions 1..T-1
    logits = head(hidden[:, :-1][wanted])  # (P, V), P wanted positions
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:][wanted][:, None]).squeeze(-1)
    out = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)  # (M, T)
    out[:, 1:][wanted] = picked
    return out


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading tokens every row holds, the same in each: (M, T) -> P, at most T - 1,
    so that at least one column is left after the prefix."""
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)  # (T,)
    return min(int(same.long().cumprod(dim=0).sum()), input_ids.shape[1] - 1)


def hidden_with_shared_prefix(decoder, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              p: int) -> torch.Tensor:
    """The decoder's last hidden state (M, T, H) of right-padded rows whose first ``p`` tokens
    are the same, with the prefix encoded once.

    One row's pass over the prefix gives its hidden states (1, P, H) and its keys and values;
    every row then continues from those, (M, T - P) new tokens, as generation continues from a
    cache. A causal model's states at a position depend only on the tokens up to it, so each
    row gets the states its own full pass would give (equal up to float rounding: tested), and
    the backward pass sums every row's gradient into the one prefix pass. The rows' positions
    go on from P, so a row's position is its column: right padding only."""
    m = input_ids.shape[0]
    first = decoder(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True)
    kv = [(k.expand(m, -1, -1, -1), v.expand(m, -1, -1, -1)) for k, v in from_model_cache(cache_of(first))]
    rest = decoder(input_ids=input_ids[:, p:], attention_mask=attention_mask, use_cache=True,
                   **{cache_argument(decoder): as_model_cache(kv)})
    return torch.cat([first.last_hidden_state.expand(m, -1, -1), rest.last_hidden_state], dim=1)  # (M, T, H)


def _checkpointing(model) -> bool:
    """Whether activation checkpointing is on in ``model`` (transformers 5's property, or 4.x's)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return getattr(model, "is_gradient_checkpointing", False)


LOGIT_CHANGING_CONFIG = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
"""Config fields with which a transformers model changes its logits after the output layer
(Gemma 2, Cohere, Granite, Falcon-H1): such a model never takes the shortcut of :func:`logprobs_at`."""


def _logits_are_the_head_of_the_last_state(model) -> bool:
    """Whether the model's logits are its output layer applied to the decoder's last hidden
    state and nothing more, so that :func:`logprobs_at` computes them. Decided once per model
    and remembered: no config field of :data:`LOGIT_CHANGING_CONFIG` is set, and on a short
    input the two computations agree. Otherwise the full forward pass is used."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner, "_plain_head", None) is None:
        inner._plain_head = _check_plain_head(inner)
    return inner._plain_head


def _check_plain_head(inner) -> bool:
    if any(getattr(inner.config, name, None) not in (None, 1, 1.0) for name in LOGIT_CHANGING_CONFIG):
        return False
    try:
        decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if decoder is inner or head is None:
        return False
    ids = (torch.arange(8, device=inner.device) % inner.config.vocab_size)[None]  # (1, 8)
    with torch.no_grad():
        full = inner(input_ids=ids, use_cache=False).logits.float()  # (1, 8, V)
        short = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
    return full.shape == short.shape and torch.allclose(full, short, rtol=1e-3, atol=1e-3)


def sample_by_inverse_cdf(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row drawn from softmax(scores), by inverting its CDF: (M, V) -> (M,).

    Draw u uniform in [0, 1) per row and take the first token whose cumulative probability
    exceeds u: token i is drawn when cdf[i-1] <= u < cdf[i], an interval of length p_i. A
    token of probability 0 (score -inf, e.g. cut by top-p) owns an empty interval and is
    never drawn. The distribution is torch.multinomial's: u and the sum are in float64, so
    even tokens of tiny probability keep their share, and u is scaled to the sum's rounded
    total. On a CPU this is some 20 to 30 times faster than torch.multinomial over a
    vocabulary of thousands (``python benchmarks/bench_generation.py``).
    """
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1, dtype=torch.float64)  # (M, V)
    u = torch.rand(len(cdf), 1, generator=generator, dtype=torch.float64).to(cdf.device) * cdf[:, -1:]  # (M, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)  # (M,)


class InverseCdfSampler:
    """A logits processor for ``generate``: draws each row's next token with
    :func:`sample_by_inverse_cdf` and returns scores that are 0 at that token and -inf
    elsewhere, so that greedy decoding emits the sampled token."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = sample_by_inverse_cdf(scores, self.generator)  # (M,)
        chosen = torch.full_like(scores, float("-inf"))  # (M, V)
        return chosen.scatter_(1, token[:, None], 0.0)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _quantization_config(quantization: str, device: str):
    if quantization == "none":
        return None
    if quantization != "nf4":
        raise ValueError(f"quantization must be 'nf4' or 'none', not {quantization!r}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as err:  # ImportError, or a broken native library
        raise RuntimeError(
            f"4-bit NF4 needs bitsandbytes, which is not usable here ({err}). "
            "Install it (pip install bitsandbytes), or opt in to full precision explicitly "
            "with quantization='none' (--quantization none)."
        ) from err
    # Compute in bf16 on a GPU; on a CPU, fp32 is the fast and exact choice.
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


REPO_ROOT = Path(__file__).resolve().parent.parent


def within_project(path: str | Path) -> str:
    """``path`` as a recorded result gives it: relative to the project root when it lies inside
    the project, as it is otherwise. A path through a link in the project (``runs`` may link to
    a folder elsewhere) is inside: it is read as written first, then with links followed. Read
    as written, ``..`` drops the name before it, which is right unless that name is a link
    (``runs/..`` is the parent of where ``runs`` leads): the written reading counts only where
    it names the same place."""
    path = Path(path).expanduser()
    written, real = Path(os.path.abspath(path)), path.resolve()
    for candidate in ([written] if written.resolve() == real else []) + [real]:
        if candidate.is_relative_to(REPO_ROOT):
            return candidate.relative_to(REPO_ROOT).as_posix()
    return str(path)


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""A Hugging Face hub model id: ``owner/name`` (or a legacy bare ``name`` such as ``gpt2``)."""


def is_local_path(spec: str | Path, roots: tuple[Path, ...] = ()) -> bool:
    """Whether ``spec`` can only mean a local path, never a hub name: a ``Path`` object; text
    that starts with ``.``, ``/`` or ``~``; text that is no hub id (three parts, spaces, ``..``);
    or ``owner/name`` where a folder ``owner`` exists here (in the working directory, under one
    of ``roots`` or in the repository), so ``data/no_such_model`` is a missing local directory
    while ``Qwen/Qwen2.5-0.5B-Instruct`` is a hub name."""
    if isinstance(spec, Path):
        return True
    if spec.startswith((".", "/", "~")) or not HUB_NAME.fullmatch(spec) or ".." in spec:
        return True
    owner = Path(spec).parent
    return owner != Path(".") and any((root / owner).is_dir() for root in (Path(), *roots, REPO_ROOT))


def _resolve_base(base: str | Path, adapter_dir: Path | None = None) -> str:
    """Where to load ``base`` from: a model directory (config.json, or an adapter's
    adapter_config.json) at the path as given, else relative to the adapter's directory or to
    the repository (so the default ``data/base`` works from ``notebooks/`` too); else the hub
    name it is. A local path (see :func:`is_local_path`) with no model directory is a
    FileNotFoundError at once, never tried on the hub."""
    try:
        path = Path(base).expanduser()
    except RuntimeError:  # "~nosuchuser/model"
        raise FileNotFoundError(f"no model directory at {base}: no such user") from None
    roots = (*([adapter_dir] if adapter_dir else []), REPO_ROOT)
    candidates = [path] if path.is_absolute() else [path, *(root / path for root in roots)]
    for candidate in candidates:
        if (candidate / "config.json").exists() or (candidate / ADAPTER_FILE).exists():
            return str(candidate)
    found = next((c for c in candidates if c.is_dir()), None)
    if found is not None:
        raise FileNotFoundError(f"{base} is not a model directory: no config.json or {ADAPTER_FILE} in {found}")
    if is_local_path(base, roots):
        raise FileNotFoundError(f"no model directory at {base}")
    return str(base)


def model_location(spec: str | Path) -> str:
    """Where :func:`load_policy` would load ``spec`` from (a local model or adapter directory, or
    a hub name), found without loading anything. A FileNotFoundError for a local path with no
    model there, and for a hub name that is neither in the local Hugging Face cache nor
    reachable now (one short request, :func:`_hub_unreachable`). Lets a command check its model
    before it writes anything."""
    location = _resolve_base(spec)
    if Path(location).is_dir():
        return location
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(location, "config.json"), str):
        return location
    why = _hub_unreachable()
    if why is not None:
        raise FileNotFoundError(f"{location} is neither a local model directory nor in the Hugging Face cache, "
                                f"and the hub cannot be reached ({why})")
    return location


def check_lora_targets(spec: str | Path, lora: LoraSettings) -> None:
    """A ValueError, before anything is loaded or written, when ``lora.target_modules`` names a
    module the base ``spec`` does not have (peft would fail only once a worker loads it). The
    base is built on PyTorch's meta device, with no weights. An adapter directory brings its
    own targets, so it is not checked."""
    if lora.target_modules == "all-linear":
        return
    location = model_location(spec)
    if (Path(location) / ADAPTER_FILE).exists():
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError):
        return  # loading will say what is wrong with the base itself
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [name for name, _ in model.named_modules() if name]
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if isinstance(lora.target_modules, str):  # peft reads a string as a regular expression over full names
        missing = [] if any(re.fullmatch(lora.target_modules, n) for n in names) else [lora.target_modules]
    else:
        missing = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"lora.target_modules: {', '.join(missing)} matches no module of {spec} "
                         f"(its linear layers: {', '.join(linear)}, or \"all-linear\")")


def _adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter directory belongs to: its adapter_config.json's
    ``base_model_name_or_path``; a ValueError naming the file if it is unreadable or lacks it."""
    file = adapter_dir / ADAPTER_FILE
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable JSON file ({err})") from None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{file}: no base_model_name_or_path (the base model the adapter belongs to)")
    return base


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now, or None if it answers: offline mode
    (``HF_HUB_OFFLINE=1``), or no answer below HTTP 500 to one HEAD request of its endpoint within
    ``timeout`` seconds. One try, through the hub library's own HTTP session (its proxies and
    certificates), in a thread so that a name lookup that hangs is bounded too."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    answer: list[str | None] = []

    def probe() -> None:
        try:
            status = get_session().head(constants.ENDPOINT, timeout=timeout).status_code
            answer.append(None if status < 500 else f"{constants.ENDPOINT} answered HTTP {status}")
        except Exception as err:  # any failure to connect: DNS, refused, timeout, proxy, TLS
            answer.append(f"{constants.ENDPOINT}: {type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return answer[0] if answer else f"no answer from {constants.ENDPOINT} within {timeout:g} s"


@contextlib.contextmanager
def quiet_loading():
    """Silence, while a model loads, what the libraries print that teaches nothing here:
    transformers' "Loading weights" bar (one per load, two per worker), bitsandbytes' note
    that an optional CPU kernel package is missing, the FutureWarning peft triggers by asking
    transformers 5 a deprecated question (``is_gradient_checkpointing``), and tqdm's note that a
    notebook has no ipywidgets. Errors, and every other warning, still come through; the
    settings are restored after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="IProgress not found")  # raised when transformers is first imported
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        kernel_note = logging.getLogger("bitsandbytes.backends.cpu.ops")
        level = kernel_note.level
        hf_logging.disable_progress_bar()
        kernel_note.setLevel(logging.ERROR)
        try:
            yield
        finally:
            kernel_note.setLevel(level)
            if bars:
                hf_logging.enable_progress_bar()


def _from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained(name, **kwargs)``. A local directory loads as is. A hub name loads
    from the local Hugging Face cache when it is there, else from the hub only if the hub answers
    now (:func:`_hub_unreachable`): a model neither cached nor reachable is one OSError within
    seconds, not a minute of download retries."""
    if Path(name).is_dir():
        return cls.from_pretrained(name, **kwargs)
    try:
        return cls.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as not_cached:
        why = _hub_unreachable()
        if why is not None:
            raise OSError(f"{name} is neither a local directory nor in the Hugging Face cache, "
                          f"and the hub cannot be reached ({why})") from not_cached
    return cls.from_pretrained(name, **kwargs)


def without_trailing(ids: list[int], pad: int) -> list[int]:
    """``ids`` without the padding a batch fills a finished turn's row with."""
    end = len(ids)
    while end and ids[end - 1] == pad:
        end -= 1
    return ids[:end]


def cut_at_stop(ids: list[int], decode: Callable[[list[int]], str], stops: list[str]) -> Turn:
    """A written turn kept up to and including its first closing tag (all of it if it has none).

    The ids kept are the shortest run of ``ids`` that decodes to exactly the kept text, so the
    turn is trained on the tokens that were sampled. When the tag ends inside a token (the
    text goes on after it within one token), no run does: the turn's ids are None and it is
    encoded from its text.
    """
    text = decode(ids)
    ends = [text.find(t) + len(t) for t in stops if t in text]
    if not ends:
        return Turn(text, list(ids))
    kept = text[: min(ends)]
    for n in range(len(ids), 0, -1):  # the cut is near the end: drop tokens until the text fits
        shown = decode(ids[:n])
        if shown == kept:
            return Turn(kept, list(ids[:n]))
        if len(shown) < len(kept):
            break
    return Turn(kept, None)


class Policy:
    """A causal LM with one LoRA adapter, able to sample turns and score tokens."""

    def __init__(self, model, tokenizer, device: str, sampling: SamplingSettings = SamplingSettings(),
                 seed: int = 0, prefix_cache_mib: float = 0):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.prefix_cache = PrefixCache(prefix_cache_mib) if prefix_cache_mib else None
        """Each conversation's keys and values kept between its turns (prefix_cache.py), or None."""
        self.sampling = sampling
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._stop_ids = {role: self._single_token_ids(stop_strings(role)) for role in ("main", "sub", "single")}
        self.chat: ChatFormat | None = chat_format(tokenizer)
        """The model's chat format when its tokenizer has a chat template (an instruct model),
        else None: our base reads the protocol as plain text (chat.py)."""

    def render(self, trajectory):
        """A trajectory as this model reads it and is trained on it: in its chat format, or as is."""
        return render_chat(trajectory, self.chat)

    # -- encoding --------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        """The id written into padding positions (the pad token, or EOS when there is none)."""
        return self.tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (the protocol is all text)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _single_token_ids(self, strings: list[str]) -> list[int] | None:
        """Ids of strings that are each one token in this tokenizer; None if any is not."""
        ids = [self.encode(s) for s in strings]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    # -- sampling ----------------------------------------------------------------------

    @torch.no_grad()
    def act(self, role: str, contexts: list) -> list[Turn]:
        """Sample one turn for each context (the ``episode.Agent`` interface).

        A context is text, or a trajectory in this policy's format (``render``; what
        ``episode.agent_context`` hands a policy), encoded by :meth:`context_ids`. Each turn
        comes back as a :class:`episode.Turn`: its text, cut after the first closing tag, and
        the sampled ids of that text (:func:`cut_at_stop`).

        With a temperature above 0, every token is drawn by :func:`sample_by_inverse_cdf`
        from the policy's own generator (``self.generator``; torch's global one is never
        touched), after temperature and top-p; at temperature 0 decoding is greedy. With a
        prefix cache (``self.prefix_cache``, prefix_cache.py) only the tokens of each context
        that the cache does not hold are encoded; without one, transformers' ``generate``
        encodes every context whole.
        """
        if not contexts:
            return []
        ids = [self.context_ids(c) for c in contexts]
        write = self._write_turns_with_prefix_cache if self.prefix_cache is not None else self._write_turns
        pad = self.tokenizer.pad_token_id  # set in __init__, never None
        decode = lambda i: self.tokenizer.decode(i, skip_special_tokens=False)  # noqa: E731
        return [cut_at_stop(without_trailing(turn, pad), decode, stop_strings(role)) for turn in write(role, ids)]

    def context_ids(self, context) -> list[int]:
        """The token ids a context is continued from: text encoded whole; a trajectory (already
        in this policy's format) segment by segment, each turn by the ids it was sampled as, by
        ``batching.encode_trajectory``, the encoding the update scores. A turn is therefore
        trained in the very token context it was written in."""
        if isinstance(context, str):
            return self.encode(context)
        return encode_trajectory(context, self.encode)[0]

    def _processors(self):
        """The logits processors of a sampled turn (None when greedy): temperature, top-p, and
        last the draw, which leaves 0 at the drawn token and -inf elsewhere, so that taking
        the largest score emits exactly the sampled token."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        s = self.sampling
        if s.temperature == 0:
            return None
        return LogitsProcessorList(([TemperatureLogitsWarper(s.temperature)] if s.temperature != 1.0 else [])
                                   + ([TopPLogitsWarper(s.top_p)] if s.top_p < 1.0 else [])
                                   + [InverseCdfSampler(self.generator)])

    def _write_turns(self, role: str, contexts: list[list[int]]) -> list[list[int]]:
        """Each context's new tokens, by transformers' ``generate`` on left-padded contexts."""
        s = self.sampling
        width = max(len(c) for c in contexts)
        batch = {"input_ids": torch.tensor([[self.pad_id] * (width - len(c)) + c for c in contexts]),
                 "attention_mask": torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])}
        batch = {k: v.to(self.device) for k, v in batch.items()}  # (M, T) each: T the longest context, padded on the left
        stop_ids = self._stop_ids[role]
        kwargs = dict(max_new_tokens=s.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, do_sample=False)
        if stop_ids is not None:
            kwargs["eos_token_id"] = stop_ids  # the closing tags are single tokens: stop on their ids
        else:
            kwargs.update(stop_strings=stop_strings(role), tokenizer=self.tokenizer)
        processors = self._processors()
        if processors is not None:
            # generate() decodes greedily over scores in which the last processor has already
            # drawn the token: it emits exactly the sampled tokens.
            kwargs["logits_processor"] = processors
        out = self.model.generate(**batch, **kwargs)
        return out[:, batch["input_ids"].shape[1]:].tolist()  # (M, T): the T new tokens of each context

    def _write_turns_with_prefix_cache(self, role: str, contexts: list[list[int]]) -> list[list[int]]:
        """Each context's new tokens, by :func:`prefix_cache.generate`: the same stops as
        :meth:`_write_turns` (the role's closing tags; when they are not single tokens, their
        text or the model's own end-of-sequence token)."""
        processors = self._processors()
        stop_ids, texts = self._stop_ids[role], []
        if stop_ids is None:
            eos = self.model.generation_config.eos_token_id
            stop_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            texts = stop_strings(role)
        stop_ids = torch.tensor(stop_ids, dtype=torch.long)

        def pick(logits: torch.Tensor) -> torch.Tensor:  # (M, V) -> (M,)
            return (logits if processors is None else processors(None, logits)).argmax(dim=-1)

        def stopped(written: torch.Tensor, t: int) -> torch.Tensor:  # (M, t + 1) -> (M,)
            hit = torch.isin(written[:, t], stop_ids)
            if not texts:
                return hit
            return hit | torch.tensor([any(x in self.tokenizer.decode(row) for x in texts) for row in written.tolist()])

        return generate_with_prefix_cache(self.model, self.prefix_cache, contexts, pick,
                                          stopped, self.sampling.max_new_tokens, self.tokenizer.pad_token_id)

    # -- scoring -----------------------------------------------------------------------

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       reference: bool = False, where: torch.Tensor | None = None,
                       share_prefix: int = 0) -> torch.Tensor:
        """(M, T) log-probs of the given right-padded ids; under the base alone if ``reference``.

        ``where`` (M, T), bool: the positions whose log-probs are needed (the loss's weighted
        tokens); every other position gets 0, and the output layer and softmax run only on the
        hidden states that predict those positions. A loss reads only a few positions of a
        multi-turn trajectory (the agent's own tokens), and over a vocabulary of thousands the
        output layer is a large share of the model's work:
        ``python benchmarks/bench_update.py`` measures the saving. The values at ``where``
        equal the full computation's (tested).

        With ``share_prefix`` > 0, rows that all begin with at least that many equal tokens
        encode them once (:func:`hidden_with_shared_prefix`; with ``where`` only, and not under
        activation checkpointing, which keeps no cache): the same values (tested).

        Gradients flow into the adapter unless called under torch.no_grad() or with
        ``reference=True`` (the reference is always computed without gradients).
        """
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if where is not None:
            where = where.to(self.device).bool() & attention_mask.bool()  # padding is never wanted
        with contextlib.ExitStack() as context:
            if reference:
                context.enter_context(torch.no_grad())
                context.enter_context(self.model.disable_adapter())
            if where is None or not _logits_are_the_head_of_the_last_state(self.model):
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (M, T, V)
                logp = token_logprobs_from_logits(logits, input_ids) * attention_mask  # (M, T)
                return logp if where is None else logp * where
            inner = self.model.get_base_model()
            decoder = inner.get_decoder()
            p = shared_prefix_length(input_ids, attention_mask) if share_prefix and len(input_ids) > 1 else 0
            if p >= share_prefix > 0 and not _checkpointing(inner):
                hidden = hidden_with_shared_prefix(decoder, input_ids, attention_mask, p)
            else:
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                                 use_cache=False).last_hidden_state  # no cache: nothing is generated
            return logprobs_at(hidden, inner.get_output_embeddings(), input_ids, where)

    @contextlib.contextmanager
    def checkpointing(self, on: bool = True):
        """Within the block (when ``on``), each decoder layer of a forward pass keeps only its
        input, and the backward pass recomputes the layer: the update's activations cost one
        layer's worth of memory instead of every layer's, at the price of a second forward pass.
        Switched off again after the block, so generation keeps its cache. The values and the
        gradients are those without it (tested)."""
        inner = self.model.get_base_model()
        if not on or not getattr(inner, "supports_gradient_checkpointing", False):
            yield
            return
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers 5
            inner.activation_checkpointing_enable({"use_reentrant": False})
            disable = inner.activation_checkpointing_disable
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            disable = inner.gradient_checkpointing_disable
        try:
            yield
        finally:
            disable()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- saving ------------------------------------------------------------------------

    def save_adapter(self, out: str | Path) -> None:
        """Save the adapter alone (a few hundred kB), plus the tokenizer for convenience."""
        out = Path(out)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))


def dequantize_4bit_layers(model) -> None:
    """Replace each bitsandbytes 4-bit linear layer of ``model`` by a frozen full-precision
    ``nn.Linear`` holding its dequantised weights, in place.

    On a CPU bitsandbytes has no 4-bit matrix product that autograd can use: every forward
    pass of a 4-bit layer dequantises its weights and multiplies in full precision, and
    generation repeats that for every token. The base is frozen, so dequantising once, at
    load, computes the same numbers (logits equal bit for bit, tested) in less time
    (``python benchmarks/bench_generation.py``, ``bench_update.py``), at full precision's memory. The model still
    is the NF4 model: its weights are the 4-bit values, only stored unpacked. On a GPU
    bitsandbytes' own kernels run and the layers stay 4-bit.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            weight = dequantize_4bit(child.weight.data, child.weight.quant_state).to(torch.float32)  # out_features x in_features
            linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                     device="meta")  # no initialisation (and no draw from the RNG): set below
            linear.weight = torch.nn.Parameter(weight, requires_grad=False)
            if child.bias is not None:
                linear.bias = torch.nn.Parameter(child.bias.data.float().clone(), requires_grad=False)
            setattr(parent, name, linear)


def load_policy(path: str | Path, quantization: str = "nf4", device: str | None = None,
                lora: LoraSettings = LoraSettings(), sampling: SamplingSettings = SamplingSettings(),
                trainable: bool = True, seed: int = 0, nf4_on_cpu: str = "dequantized",
                prefix_cache_mib: float = 0, dtype: str = "float32") -> Policy:
    """Load a base (local directory or hub name) with a fresh adapter, or a saved adapter.

    ``path`` is either a base model (a directory with config.json, or a hub name), which
    gets a new LoRA adapter, or an adapter directory written by :meth:`Policy.save_adapter`,
    whose base is loaded first and the adapter loaded onto it. ``seed`` seeds the new
    adapter's initialisation and the policy's sampling, so one seed gives one run.

    A local path (see :func:`is_local_path`) with no model there is a FileNotFoundError at once;
    an adapter_config.json without its base is a ValueError naming the file; a hub name that is
    neither cached nor reachable is an OSError within seconds (:func:`_from_pretrained`).

    ``nf4_on_cpu``: on a CPU, a 4-bit base is "dequantized" once at load (the default; the
    same numbers, faster: :func:`dequantize_4bit_layers`) or kept "packed" in bitsandbytes'
    4-bit layers (linear weights in 4 bits instead of 32, dequantised again on every forward
    pass).

    ``prefix_cache_mib`` > 0 keeps each conversation's keys and values between its turns, in
    at most that many MiB (prefix_cache.py); 0 encodes every context whole.

    ``dtype``: a full-precision base (``quantization="none"``) is held in "float32" or
    "bfloat16", its activations too; the LoRA adapter stays in float32 either way (peft
    computes its branch in the adapter's dtype and adds it to the base layer's output), so
    its gradients and the optimiser's moments are float32, and log-probabilities are taken
    from float32 logits. With NF4 the compute dtype is bfloat16 on a GPU, float32 on a CPU.
    """
    check_choice("nf4_on_cpu", nf4_on_cpu, NF4_ON_CPU)
    check_choice("dtype", dtype, DTYPES)
    with quiet_loading():  # what the libraries print while loading teaches nothing here
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or default_device()
        where = _resolve_base(path)  # a local model or adapter directory, or a hub name
        adapter_dir = Path(where) if (Path(where) / ADAPTER_FILE).exists() else None
        base = _resolve_base(_adapter_base(adapter_dir), adapter_dir) if adapter_dir is not None else where
        quant = _quantization_config(quantization, device)
        # transformers looks for an adapter in a hub base's repository without passing local_files_only
        # on to that lookup: keep it off the network (a saved adapter is loaded by peft, below).
        model = _from_pretrained(
            AutoModelForCausalLM, base, quantization_config=quant, device_map={"": device},
            dtype=(getattr(torch, dtype) if quant is None
                   else torch.bfloat16 if device.startswith("cuda") else torch.float32),
            adapter_kwargs={"local_files_only": True})
        tokenizer = _from_pretrained(AutoTokenizer, str(adapter_dir or base))
        for p in model.parameters():  # the base is frozen; only adapters train
            p.requires_grad_(False)
        if quant is not None and device == "cpu" and nf4_on_cpu == "dequantized":
            dequantize_4bit_layers(model)  # before the adapter is added: LoRA wraps plain linear layers
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
        else:
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora.target_modules if isinstance(lora.target_modules, str)
                                else list(lora.target_modules), task_type="CAUSAL_LM")
            with torch.random.fork_rng(devices=[]):  # a seeded init; the global CPU RNG is restored after
                torch.manual_seed(seed)
                model = get_peft_model(model, config)  # LoRA A: random (seeded); B: zeros
        for name, p in model.named_parameters():  # peft keeps adapters in float32 on a bfloat16 base: make sure
            if "lora_" in name and p.dtype != torch.float32:
                p.data = p.data.float()
        model.config.use_cache = True
        # Training mode, always. In eval mode bitsandbytes repacks packed 4-bit weights on the CPU into an
        # inference-only layout on the first no-grad forward, after which a forward with autograd
        # fails. Our configs have no dropout (LoRA dropout 0, the base's attention dropout 0), so
        # training mode computes exactly what eval mode would.
        model.train()
        return Policy(model, tokenizer, device, sampling, seed, prefix_cache_mib)
