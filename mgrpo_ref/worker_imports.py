"""What a worker loads its policy with, imported once by the fork server that starts workers
(``worker.PRELOAD``), quietly: importing bitsandbytes prints a note about an optional CPU
kernel package that teaches nothing here (``policy.quiet_loading``)."""

import importlib

from .policy import quiet_loading

MODULES = ("peft", "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto")
"""peft brings transformers' model code and bitsandbytes; the auto classes find a base's own."""

with quiet_loading():
    for name in MODULES:
        importlib.import_module(name)
