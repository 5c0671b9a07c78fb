"""The supervised warm-up (sft.py) on the committed tiny base: files, summary, the CLI, and M-GRPO
continuing the warm-up adapter. The real model's warm-up is in test_real_model.py."""

import json

import pytest

from mgrpo_ref import sft
from mgrpo_ref.config import TrainConfig
from mgrpo_ref.step import make_learner


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    cfg = sft.SFTConfig(base="data/base", steps=6, batch_size=4, n_worlds=2, eval_questions=6)
    return out, sft.warm_up(cfg, out, progress=False)


def test_the_warm_up_writes_its_adapter_curve_and_held_out_check(warmed):
    out, summary = warmed
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "loss_curve.png").stat().st_size > 0
    saved = json.loads((out / "sft.json").read_text())
    assert saved["config"]["steps"] == 6 and len(saved["losses"]) == 6 and saved["n_trajectories"] > 0
    assert saved["config"]["demo_hasty"] == 0.6  # the teacher our tiny base learns from
    assert set(saved["held_out"]) == {"accuracy", "format_valid", "sub_format_valid", "mean_sub_calls"}
    assert 0 < saved["n_agent_tokens"] and summary["held_out"] == saved["held_out"]
    assert 0 < saved["train_seconds"] <= saved["seconds"]  # the loop alone, and the whole warm-up


def test_m_grpo_continues_the_warm_up_adapter(warmed):
    """base= the adapter directory: the learner loads the base and the adapter on top, trainable."""
    out, _ = warmed
    learner = make_learner(str(out / "adapter"), TrainConfig(base=str(out / "adapter"), quantization="none"))
    names = [n for n, p in learner.policy.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_the_cli_refuses_bad_values_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--base", "data/base", "--out", str(tmp_path / "o"), "--steps", "0", "--quiet"])
    assert exit_.value.code == 2
    assert "steps=0 is invalid" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--base", "data/nowhere", "--out", str(tmp_path / "o"), "--quiet"])
    assert exit_.value.code == 2
    assert "data/nowhere" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--base", "data/base", "--out", str(tmp_path / "o"), "--demo-hasty", "1.5", "--quiet"])
    assert exit_.value.code == 2
    assert "demo_hasty=1.5 is invalid" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_warm_up_merged_into_the_base_computes_what_base_and_adapter_compute(warmed, tmp_path):
    """sft.merge_warm_up: a standard model directory with the warm-up in its weights; a fresh
    adapter on it gives the logits of the warm-up adapter on the base (full precision)."""
    import torch

    from mgrpo_ref.policy import load_policy

    out, _ = warmed
    merged = sft.merge_warm_up(out / "adapter", tmp_path / "merged")
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([load_policy("data/base", quantization="none").encode("<question> Who founded Kiren Works?")])

    def logits(path):
        with torch.no_grad():
            return load_policy(path, quantization="none", trainable=False).model(input_ids=ids).logits

    warm, base = logits(out / "adapter"), logits("data/base")
    assert (warm - base).abs().max() > 1e-3  # six steps moved the model
    assert torch.allclose(logits(merged), warm, atol=1e-4)
