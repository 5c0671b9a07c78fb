"""The QLoRA policy: loading, 4-bit layers, log-probs, reference, adapters, sampling."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mgrpo_ref.batching import collate
from mgrpo_ref.episode import Turn
from mgrpo_ref.policy import (SamplingSettings, load_policy, sample_by_inverse_cdf,
                              token_logprobs_from_logits)
from mgrpo_ref.pretrain import SIZES, pretrain

CONTEXTS = [
    "<question>What is the capital of Veskaland?</question>\n",
    "<question>Who is the founder of the employer of the mentor of Bako Tumar?</question>\n<delegate>Who is",
    "<question>What is the country of Kaun?</question>\n<delegate>What is the country of Kaun?</delegate>\n"
    "<result>Rokiora</result>\n",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base built by the real pretraining code (seconds)."""
    out = tmp_path_factory.mktemp("base")
    pretrain(SIZES["tiny"], out, progress=False)
    return out


def perturb_adapter(policy, seed=0):
    """Give the adapter non-zero weights (a fresh LoRA has B = 0, i.e. no effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def batch_of(policy, texts):
    return collate([(policy.encode(t), [1] * len(policy.encode(t))) for t in texts], policy.tokenizer.pad_token_id)


def test_saved_base_loads_with_auto_classes(base):
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    assert model.config.model_type == "qwen2"
    ids = tok("<visit> 12</visit>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<visit>", "</visit>"]
    assert tok.decode(ids) == "<visit> 12</visit>"
    assert len(tok) == model.config.vocab_size  # AutoTokenizer adds no token beyond the embeddings
    assert json.loads((base / "pretrain.json").read_text())["n_parameters"] > 0
    assert (base / "loss_curve.png").stat().st_size > 0


def test_committed_base_is_the_default_build():
    """data/base was made by `python -m mgrpo_ref.pretrain` with today's defaults."""
    from dataclasses import asdict

    from mgrpo_ref.policy import REPO_ROOT

    built = json.loads((REPO_ROOT / "data/base/pretrain.json").read_text())["config"]
    assert built == asdict(SIZES["default"])


def test_committed_base_tokenizer_matches_its_embeddings():
    from mgrpo_ref.policy import REPO_ROOT

    config = json.loads((REPO_ROOT / "data/base/config.json").read_text())
    assert len(AutoTokenizer.from_pretrained(REPO_ROOT / "data/base")) == config["vocab_size"]


def test_pretrain_command_builds_a_working_model(tmp_path):
    out = tmp_path / "b"
    proc = subprocess.run([sys.executable, "-m", "mgrpo_ref.pretrain", "--size", "tiny", "--steps", "5",
                           "--demo-noise", "0.5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "pretrain.json").read_text())["config"]
    assert (config["steps"], config["demo_noise"]) == (5, 0.5)
    refused = subprocess.run([sys.executable, "-m", "mgrpo_ref.pretrain", "--size", "tiny", "--demo-misread", "-1",
                              "--out", str(tmp_path / "never")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "demo_misread=-1.0 is invalid: must be a finite number in [0, 1]" in refused.stderr
    assert not (tmp_path / "never").exists()
    policy = load_policy(out, quantization="none")
    assert len(policy.act("main", CONTEXTS[:1])) == 1


def test_4bit_load_holds_linear4bit_layers(base):
    import bitsandbytes as bnb

    policy = load_policy(base, nf4_on_cpu="packed")
    kinds = {type(m).__name__ for m in policy.model.modules()}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.model.modules()), kinds
    full = load_policy(base, quantization="none")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in full.model.modules())
    # only adapter weights train
    assert policy.trainable_parameters() and all("lora_" in n for n, p in policy.model.named_parameters()
                                                  if p.requires_grad)


def test_a_4bit_base_dequantised_once_computes_what_the_packed_layers_compute(base):
    """On a CPU the default holds the NF4 weights unpacked in plain linear layers: the same
    log-probs bit for bit, the same adapter gradient, the same greedy turns."""
    import bitsandbytes as bnb

    packed = load_policy(base, nf4_on_cpu="packed", seed=1,
                         sampling=SamplingSettings(temperature=0.0, max_new_tokens=12))
    unpacked = load_policy(base, seed=1, sampling=SamplingSettings(temperature=0.0, max_new_tokens=12))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in unpacked.model.modules())
    assert not any(p.requires_grad for n, p in unpacked.model.named_parameters() if "lora_" not in n)
    for policy in (packed, unpacked):
        perturb_adapter(policy, seed=4)
    batch = batch_of(packed, CONTEXTS)
    grads = []
    for policy in (packed, unpacked):
        logp = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
        (-logp.sum()).backward()
        grads.append([p.grad for p in policy.trainable_parameters()])
        policy.logp = logp.detach()
    assert torch.equal(packed.logp, unpacked.logp)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert packed.act("sub", CONTEXTS) == unpacked.act("sub", CONTEXTS)
    full = load_policy(base, quantization="none", seed=1)  # not the NF4 model: other numbers
    with torch.no_grad():
        assert not torch.equal(full.token_logprobs(batch["input_ids"], batch["attention_mask"]), packed.logp)


def test_a_bad_nf4_on_cpu_is_a_clear_error(base):
    with pytest.raises(ValueError, match="nf4_on_cpu"):
        load_policy(base, nf4_on_cpu="zipped")


def test_a_bfloat16_base_keeps_its_adapter_gradients_and_log_probs_in_float32(base, tmp_path):
    """dtype="bfloat16": the base's weights in bfloat16, the adapter in float32 (also when
    loaded back from its directory); the log-probs are float32 and near the float32 base's."""
    tok = AutoTokenizer.from_pretrained(str(base))
    batch = collate([(tok.encode(c), [1] * len(tok.encode(c))) for c in CONTEXTS], tok.pad_token_id)
    ids, att = batch["input_ids"], batch["attention_mask"]
    exact = load_policy(base, quantization="none", seed=1)
    half = load_policy(base, quantization="none", seed=1, dtype="bfloat16")
    perturb_adapter(exact)
    perturb_adapter(half)
    dtypes = {name: p.dtype for name, p in half.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    logp = half.token_logprobs(ids, att)
    with torch.no_grad():
        reference = exact.token_logprobs(ids, att)
    assert logp.dtype == torch.float32
    assert (logp - reference)[att.bool()].abs().max() < 0.25  # bfloat16 keeps about 3 significant digits
    assert not torch.equal(logp.detach(), reference)  # and it is not the float32 computation
    (logp * att).sum().backward()
    grads = [p.grad for p in half.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    half.save_adapter(tmp_path / "adapter")
    again = load_policy(tmp_path / "adapter", quantization="none", dtype="bfloat16", trainable=False)
    with torch.no_grad():
        assert torch.equal(again.token_logprobs(ids, att), logp.detach())
    cached = load_policy(tmp_path / "adapter", quantization="none", dtype="bfloat16", trainable=False,
                         prefix_cache_mib=8, sampling=SamplingSettings(0.0, 1.0, 12))
    assert [len(turn.text) > 0 for turn in cached.act("main", CONTEXTS)] == [True] * 3  # generation runs in bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_policy(base, quantization="none", dtype="float16")


def test_bad_quantization_is_a_clear_error(base):
    with pytest.raises(ValueError, match="'nf4' or 'none'"):
        load_policy(base, quantization="int3")


def test_logprobs_equal_a_direct_forward_pass_for_padded_batches(base):
    policy = load_policy(base)
    perturb_adapter(policy)
    batch = batch_of(policy, CONTEXTS)  # three lengths: right padding differs per row
    with torch.no_grad():
        got = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])  # (M, T)
        for i, text in enumerate(CONTEXTS):
            ids = torch.tensor([policy.encode(text)])
            logits = policy.model(input_ids=ids).logits
            want = token_logprobs_from_logits(logits, ids)[0]
            torch.testing.assert_close(got[i, : ids.shape[1]], want, atol=1e-5, rtol=1e-5)
            assert torch.all(got[i, ids.shape[1]:] == 0)


@pytest.mark.parametrize("reference", [False, True])
def test_logprobs_at_chosen_positions_equal_the_full_computation(base, reference):
    """``where`` runs the output layer on the wanted positions only: same values there, 0
    elsewhere (padding included), and the same adapter gradient from a loss over them."""
    policy = load_policy(base)
    perturb_adapter(policy)
    batch = batch_of(policy, CONTEXTS)
    ids, att = batch["input_ids"], batch["attention_mask"]
    where = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.4  # (M, T), some on padding
    where[:, 0] = True  # position 0 has no prediction: it stays 0 either way

    def loss_and_grads(**kwargs):
        policy.model.zero_grad(set_to_none=True)
        logp = policy.token_logprobs(ids, att, reference=reference, **kwargs)
        if not reference:
            (-(logp * where).sum()).backward()
        grads = [p.grad.clone() for p in policy.trainable_parameters()] if not reference else []
        return logp, grads

    full, full_grads = loss_and_grads()
    chosen, chosen_grads = loss_and_grads(where=where)
    wanted = where & att.bool()
    torch.testing.assert_close(chosen[wanted], full[wanted], atol=1e-5, rtol=1e-5)
    assert torch.all(chosen[~wanted] == 0) and (chosen[wanted] != 0).sum() > 10
    for a, b in zip(full_grads, chosen_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert reference or any(g.abs().sum() > 0 for g in chosen_grads)


@pytest.mark.parametrize("change", ["config field", "logits scaled in forward"])
def test_a_model_whose_logits_are_not_the_plain_head_takes_the_full_forward(base, monkeypatch, change):
    """Models that scale or cap their logits after the output layer (Gemma 2, Granite, ...)
    must not take the shortcut: neither when their config says so, nor when only a forward
    pass shows it. The shortcut is then never called, and the values are the full forward's."""
    from mgrpo_ref import policy as policy_module

    assert policy_module._logits_are_the_head_of_the_last_state(load_policy(base).model)
    policy = load_policy(base)
    inner = policy.model.get_base_model()
    if change == "config field":
        monkeypatch.setattr(inner.config, "logits_scaling", 8.0, raising=False)
    else:
        forward = inner.forward

        def scaled(*args, **kwargs):
            out = forward(*args, **kwargs)
            out.logits = out.logits * 2.0
            return out

        monkeypatch.setattr(inner, "forward", scaled)
    assert not policy_module._logits_are_the_head_of_the_last_state(policy.model)

    def shortcut(*args, **kwargs):
        raise AssertionError("logprobs_at was called for a model whose logits are not the plain head")

    monkeypatch.setattr(policy_module, "logprobs_at", shortcut)
    batch = batch_of(policy, CONTEXTS)
    where = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(policy.token_logprobs(batch["input_ids"], batch["attention_mask"], where=where),
                                   policy.token_logprobs(batch["input_ids"], batch["attention_mask"]))


def test_logprobs_at_by_hand():
    """Two rows of three tokens, a head that reads the hidden state as logits (H = V = 3):
    position t's value is log_softmax(hidden[t - 1])[id_t] where wanted, 0 elsewhere."""
    from mgrpo_ref.policy import logprobs_at

    head = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    hidden = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [9.0, 9.0, 9.0]],
                           [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])  # (2, 3, 3)
    ids = torch.tensor([[0, 2, 0], [1, 1, 0]])
    where = torch.tensor([[True, True, True], [False, False, True]])  # position 0 is never predicted
    got = logprobs_at(hidden, head, ids, where)
    lse = lambda *x: torch.logsumexp(torch.tensor(x), 0)  # noqa: E731
    want = torch.tensor([[0.0, 2.0 - lse(0.0, 1.0, 2.0), 1.0 - lse(1.0, 0.0, 0.0)],
                         [0.0, 0.0, 2.0 - lse(2.0, 0.0, 0.0)]])
    torch.testing.assert_close(got, want)


def test_inverse_cdf_sampling_draws_each_token_with_its_probability():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 1.0]])
    scores = probs.log().repeat(20_000, 1)  # (40000, 4), -inf where p = 0
    tokens = sample_by_inverse_cdf(scores, torch.Generator().manual_seed(0))
    first, second = tokens[0::2], tokens[1::2]
    freq = torch.bincount(first, minlength=4).float() / len(first)
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)  # 3 standard errors is about 0.011
    assert torch.all(second == 3)  # a certain token is always drawn; p = 0 never
    again = sample_by_inverse_cdf(scores, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)


def test_sampling_with_a_tiny_top_p_is_greedy(base):
    """top-p keeps only the most likely token when p is tiny: the sampler must then agree
    with greedy decoding token for token. This checks that top-p runs before the sampler
    (the temperature, also set, changes no argmax, so its place is not checked here)."""
    greedy = load_policy(base, sampling=SamplingSettings(temperature=0.0, max_new_tokens=12))
    perturb_adapter(greedy)
    nucleus = load_policy(base, sampling=SamplingSettings(temperature=0.7, top_p=1e-6, max_new_tokens=12))
    perturb_adapter(nucleus)
    assert nucleus.act("sub", CONTEXTS) == greedy.act("sub", CONTEXTS)


def test_sampling_leaves_the_global_generator_alone(base):
    policy = load_policy(base, sampling=SamplingSettings(temperature=1.0, max_new_tokens=8), seed=2)
    state = torch.get_rng_state()
    policy.act("main", CONTEXTS)
    assert torch.equal(torch.get_rng_state(), state)


def test_adapters_disabled_give_the_base_logprobs(base):
    policy = load_policy(base)
    perturb_adapter(policy)
    batch = batch_of(policy, CONTEXTS)
    plain = load_policy(base)  # fresh adapter, B = 0: exactly the base network
    with torch.no_grad():
        ref = policy.token_logprobs(batch["input_ids"], batch["attention_mask"], reference=True)
        adapted = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
        base_lp = plain.token_logprobs(batch["input_ids"], batch["attention_mask"])
        base_ref = plain.token_logprobs(batch["input_ids"], batch["attention_mask"], reference=True)
    torch.testing.assert_close(ref, base_lp)
    torch.testing.assert_close(base_ref, base_lp)
    assert (ref - adapted).abs().max() > 1e-3  # the perturbed adapter really changes the policy


def test_adapter_save_and_load_round_trips_exactly(base, tmp_path):
    policy = load_policy(base)
    perturb_adapter(policy, seed=3)
    policy.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter alone
    loaded = load_policy(tmp_path / "adapter")
    batch = batch_of(policy, CONTEXTS)
    with torch.no_grad():
        a = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
        b = loaded.token_logprobs(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a, b)
    assert loaded.trainable_parameters()


def test_gradients_reach_only_the_adapter(base):
    policy = load_policy(base)
    batch = batch_of(policy, CONTEXTS)
    # sampling and a no-grad pass first, as a worker does, must not break the training pass
    policy.act("main", CONTEXTS[:1])
    with torch.no_grad():
        policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
    logp = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
    (-logp.sum()).backward()
    grads = {n: p.grad for n, p in policy.model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n or "lora_B" in n)


def test_left_padded_greedy_sampling_matches_one_by_one(base):
    policy = load_policy(base, sampling=SamplingSettings(temperature=0.0, max_new_tokens=12))
    perturb_adapter(policy)
    together = policy.act("main", CONTEXTS)
    alone = [policy.act("main", [c])[0] for c in CONTEXTS]
    assert together == alone
    for text in (turn.text for turn in together):  # a turn ends at the first closing tag, if it has one
        closes = [text.find(t) for t in ("</delegate>", "</answer>") if t in text]
        assert not closes or text.endswith(("</delegate>", "</answer>"))


def test_a_turn_is_cut_after_its_closing_tag_with_the_ids_of_exactly_that_text():
    from mgrpo_ref.policy import cut_at_stop

    pieces = {1: "<search>", 2: "Ki", 3: "ren", 4: "</search>", 5: " and on", 6: "</search>."}
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    stops = ["</search>"]
    assert cut_at_stop([1, 2, 3, 4], decode, stops) == Turn("<search>Kiren</search>", [1, 2, 3, 4])
    assert cut_at_stop([1, 2, 3, 4, 5], decode, stops) == Turn("<search>Kiren</search>", [1, 2, 3, 4])
    assert cut_at_stop([1, 2, 3], decode, stops) == Turn("<search>Kiren", [1, 2, 3])  # no tag: all of it
    # the tag ends inside a token: no run of ids is exactly the kept text, so the text alone is kept
    assert cut_at_stop([1, 2, 6], decode, stops) == Turn("<search>Ki</search>", None)


class ForcedTurns:
    """Stands in for the sampler: each ``act`` call writes the next of ``turns`` (token ids)."""

    def __init__(self, turns):
        self.turns = iter(turns)

    def __call__(self):
        from transformers import LogitsProcessorList

        forced, written = next(self.turns), []

        def force(input_ids, scores):  # (M, V): -inf except at the next forced id, in every row
            out = torch.full_like(scores, float("-inf"))
            out[:, forced[len(written)]] = 0.0
            written.append(forced[len(written)])
            return out
        return LogitsProcessorList([force])


@pytest.mark.parametrize("prefix_cache_mib", [0, 8])
def test_a_sampled_turn_is_trained_on_the_ids_that_were_drawn_in_the_context_they_were_drawn_in(
        base, prefix_cache_mib):
    """The policy writes a word of its turn in two pieces ("i" + "ren") where encoding the text
    gives one token ("iren"). The turn keeps the ids drawn; the update's encoding (rendered and
    encoded by ``batching.encode_trajectory``) has them, and the next turn is written after
    exactly those ids (with a prefix cache: every token of the first turn's context and turn but
    the last is reused, none encoded again)."""
    from mgrpo_ref.batching import encode_trajectory
    from mgrpo_ref.episode import Segment, Trajectory, run_episodes
    from mgrpo_ref.tools import ToolsByWorld
    from tests.helpers import one_question

    policy = load_policy(base, prefix_cache_mib=prefix_cache_mib,
                         sampling=SamplingSettings(temperature=1.0, max_new_tokens=12))
    enc, decode = policy.encode, policy.tokenizer.decode
    canonical = enc("<search>Kiren Works</search>")
    j = next(j for j in range(1, len(canonical) - 1) if len(decode([canonical[j]])) > 1)  # between the tags
    piece = decode([canonical[j]])
    search = canonical[:j] + enc(piece[:1]) + enc(piece[1:]) + canonical[j + 1:]  # the same text, split
    assert search != canonical and decode(search) == decode(canonical)
    policy._processors = ForcedTurns([search, enc("<answer>Kaun</answer>")])
    (episode,) = run_episodes([one_question(1)], ToolsByWorld(), {"single": policy}, mode="single")
    turns = [s for s in episode.main.segments if s.source == "agent"]
    assert [t.text for t in turns] == ["<search>Kiren Works</search>", "<answer>Kaun</answer>"]
    assert turns[0].ids == search
    ids, mask = encode_trajectory(policy.render(episode.main), enc)
    assert [i for i, m in zip(ids, mask) if m] == search + enc("<answer>Kaun</answer>")
    text_only = Trajectory("single", [Segment(s.source, s.text) for s in episode.main.segments])
    assert encode_trajectory(text_only, enc)[0] != ids
    if prefix_cache_mib:
        first_context = len(enc(episode.main.segments[0].text))
        assert policy.prefix_cache.reused_tokens == first_context + len(search) - 1


def test_sampling_is_seeded(base):
    s = SamplingSettings(temperature=1.0, max_new_tokens=10)
    a = load_policy(base, sampling=s, seed=5).act("sub", CONTEXTS)
    b = load_policy(base, sampling=s, seed=5).act("sub", CONTEXTS)
    assert a == b


def test_a_new_adapter_is_initialised_from_the_seed(base):
    """One seed, one run: the adapter's random init (LoRA A) comes from ``seed``, not from
    whatever the process's global RNG holds, and the global RNG is left as it was."""
    def lora_a(policy):
        return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_A" in n}

    state = torch.get_rng_state()
    first, again, other = (lora_a(load_policy(base, seed=s)) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_a_second_architecture_with_a_chat_template_takes_the_same_path(tmp_path):
    """A random tiny Llama with a locally built tokenizer (multi-token tags, a chat template),
    saved and loaded exactly as a hub model would be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CONTEXTS * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<|end|>")
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")

    policy = load_policy(tmp_path / "llama", sampling=SamplingSettings(temperature=1.0, max_new_tokens=8))
    assert policy.model.config.model_type == "llama"
    assert policy.tokenizer.chat_template and len(policy.encode("</answer>")) > 1  # stop_strings path
    texts = policy.act("main", CONTEXTS)
    assert len(texts) == 3 and all(isinstance(t.text, str) for t in texts)
    batch = batch_of(policy, CONTEXTS)
    with torch.no_grad():
        lp = policy.token_logprobs(batch["input_ids"], batch["attention_mask"])
    assert lp.shape == batch["input_ids"].shape and torch.isfinite(lp).all()


def test_loading_a_policy_prints_nothing_but_keeps_other_warnings(tmp_path):
    """No progress bar, kernel note or deprecation warning from the libraries while a model
    loads (policy.quiet_loading); a warning of the caller's own still shows, and transformers'
    progress bars are back on after."""
    import subprocess
    import sys

    code = ("import warnings\n"
            "from mgrpo_ref.policy import load_policy\n"
            "load_policy('data/base', quantization='nf4')\n"
            "from transformers.utils import logging\n"
            "assert logging.is_progress_bar_enabled()\n"
            "warnings.warn('the caller speaks', UserWarning)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "UserWarning: the caller speaks" in lines[0], proc.stderr
