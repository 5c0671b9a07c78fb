"""Every config value is checked when the config is built: one line naming the field, the
value and what is allowed; the train CLI writes nothing before its input is checked."""

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo_ref import train
from mgrpo_ref.config import TrainConfig

# What each field allows, written down here independently of the code under test:
# (kind, low, high, low_open, high_open); None for no bound.
RULES = {
    "seed": ("int", 0, None), "steps": ("int", 1, None), "questions_per_step": ("int", 1, None),
    "rollouts": ("int", 2, None), "d_max": ("int", 1, None), "epochs": ("int", 1, None),
    "microbatch": ("int", 1, None), "max_new_tokens": ("int", 1, None), "eval_every": ("int", 1, None),
    "eval_questions": ("int", 1, None), "checkpoint_every": ("int", 1, None), "sub_staleness": ("int", 0, 1),
    "lr": ("float", 0, None, True), "max_grad_norm": ("float", 0, None, True),
    "weight_decay": ("float", 0, None), "clip_eps_high": ("float", 0, None), "kl_coef": ("float", 0, None),
    "adv_eps": ("float", 0, None), "temperature": ("float", 0, None), "eval_temperature": ("float", 0, None),
    "eval_sampled_temperature": ("float", 0, None), "clip_eps_low": ("float", 0, 1, False, True),
    "top_p": ("float", 0, 1, True, False),
    "reward.a1": ("float", 0, None), "reward.a2": ("float", 0, None), "reward.b1": ("float", 0, None),
    "reward.b2": ("float", 0, None), "reward.b3": ("float", 0, None),
    "limits.main_turns": ("int", 1, None), "limits.sub_turns": ("int", 1, None),
    "limits.single_turns": ("int", 1, None), "limits.max_turn_chars": ("int", 1, None),
    "lora.r": ("int", 1, None), "lora.alpha": ("int", 1, None), "lora.dropout": ("float", 0, 1, False, True),
}


def allowed(field: str, raw: str) -> bool:
    kind, low, high, *open_ = RULES[field] + ()
    low_open, high_open = (open_ + [False, False])[:2]
    if kind == "int":
        if not re.fullmatch(r"[-+]?[0-9]+", raw.strip()):
            return False
        value = int(raw)
    else:
        try:
            value = float(raw)
        except ValueError:
            return False
        if not math.isfinite(value):
            return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


RAW = st.one_of(st.integers(-5, 300).map(str),
                st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
                st.sampled_from(["", "abc", "1e3", "0x10", "true", "1.5", "0.999", "2", "1", "0", "-0.0", "nan"]))


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(sorted(RULES)), raw=RAW)
def test_every_value_is_accepted_or_refused_as_its_rule_says(field, raw):
    if allowed(field, raw):
        cfg = TrainConfig().override([f"{field}={raw}"])
        section, _, name = field.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        assert value == pytest.approx(float(raw))
        return
    with pytest.raises(ValueError) as err:
        TrainConfig().override([f"{field}={raw}"])
    message = str(err.value)
    assert "\n" not in message and field in message and "invalid" in message
    with tempfile.TemporaryDirectory() as tmp:  # the CLI refuses it in one line and writes nothing
        run_dir = Path(tmp) / "run"
        with pytest.raises(SystemExit) as exit_:
            train.main(["--quiet", "--run-dir", str(run_dir), f"{field}={raw}"])
        assert exit_.value.code == 2 and not run_dir.exists()


@pytest.mark.parametrize("override, says", [
    ("reward=1", "reward is a section"),
    ("limits=3", "limits is a section"),
    ("betas=0.9", "betas=(0.9,) is invalid: must be two numbers"),
    ("betas=0.9,0.98,0.99", "must be two numbers"),
    ("betas=0.9,1.0", "betas=1.0 is invalid"),
    ("variant=mgrp", "variant='mgrp' is invalid: must be one of"),
    ("quantization=int8", "quantization='int8' is invalid"),
    ("nf4_on_cpu=zipped", "nf4_on_cpu='zipped' is invalid"),
    ("dtype=float16", "dtype='float16' is invalid: must be one of"),
    ("alignment=slots", "alignment='slots' is invalid"),
    ("eval_split=train", "eval_split='train' is invalid"),
    ("lr_schedule=cosine", "lr_schedule='cosine' is invalid"),
    ("warmup_ratio=1", "warmup_ratio=1.0 is invalid: must be a finite number in [0, 1)"),  # no step at the full rate
    ("sub_lr=-1e-4", "sub_lr=-0.0001 is invalid: must be a finite number >= 0"),
    ("variant=shared sub_lr=1e-4", "sub_lr=0.0001 is invalid: needs a sub-agent that trains its own adapter"),
    ("base=", "base='' is invalid: must be a non-empty string"),
    ("lora.target_modules=", "target_modules"),
    ("nosuch=1", "unknown config field 'nosuch'"),
    ("nosuch.a=1", "unknown config section 'nosuch'"),
    ("reward.nosuch=1", "unknown config field 'reward.nosuch'"),
    ("steps", "is not key=value"),
    ("=3", "is not key=value"),
    ("record_steps=1,101", "record_steps=101 is invalid: must be an integer in [1, 100]"),  # past the last step
])
def test_named_bad_overrides_are_refused_in_one_line(override, says):
    with pytest.raises(ValueError) as err:
        TrainConfig().override(override.split())
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_list_of_module_names_is_a_tuple_and_round_trips_through_json(tmp_path):
    cfg = TrainConfig().override(["lora.target_modules=q_proj,v_proj", "betas=0.8,0.9"])
    assert cfg.lora.target_modules == ("q_proj", "v_proj") and cfg.betas == (0.8, 0.9)
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert TrainConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("text, says", [
    ("null", "expected a JSON object of config fields, got NoneType"),
    ("[]", "expected a JSON object of config fields, got list"),
    ('{"steps": "ten"}', "steps='ten' is invalid: must be an integer"),
    ('{"reward": {"b2": -1}}', "reward.b2=-1 is invalid"),
    ('{"reward": 1}', "reward=1 is invalid"),
    ('{"nosuch": 1}', "unknown config field nosuch"),
    ('{"steps": 10', "not a readable JSON file"),
    ("", "not a readable JSON file"),
])
def test_resume_with_a_bad_config_json_is_one_line_naming_the_file(tmp_path, capsys, text, says):
    (tmp_path / "config.json").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(tmp_path / "config.json") in err and says in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resume_without_a_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(tmp_path / "nothing")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.splitlines()[-1].startswith("python -m mgrpo_ref.train: error: ")
    assert "nothing does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        train.main(["--resume", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err == f"error: {tmp_path / 'empty'} holds no run to resume: it has no config.json"


@pytest.mark.parametrize("argv, says", [
    (["--seed", "-1"], "seed=-1 is invalid"),
    (["--seed", "x"], "seed='x' is invalid"),
    (["--variant", "nope"], "variant='nope' is invalid"),
])
def test_the_train_cli_checks_before_writing(tmp_path, capsys, argv, says):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main(["--quiet", "--run-dir", str(run_dir), *argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and says in err and len(err.splitlines()) == 1
    assert not run_dir.exists()


def test_a_saved_config_holds_every_field():
    d = json.loads(TrainConfig().to_json())
    assert set(d["reward"]) == {"a1", "a2", "b1", "b2", "b3"} and TrainConfig.from_dict(d) == TrainConfig()


def test_more_held_out_questions_than_the_split_has_are_refused_before_writing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "eval_questions=241"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == "error: eval_questions=241 is invalid: the eval_worlds split has 240 questions"
    assert not run_dir.exists()


def test_a_missing_local_base_is_refused_before_writing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "base=data/no_such_model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: no model directory at data/no_such_model"
    assert not run_dir.exists()


def test_an_unreachable_hub_base_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    import mgrpo_ref.policy as policy

    monkeypatch.setattr(policy, "_hub_unreachable", lambda timeout=3.0: "no network here")
    run_dir = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "base=SomeOrg/some-model"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "SomeOrg/some-model is neither a local model" in err
    assert not run_dir.exists()
