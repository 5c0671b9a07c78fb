"""A byte-level BPE tokenizer for the research world, with the protocol tags as single tokens.

Trained with the `tokenizers` library on text from many generated training worlds and saved
so that ``AutoTokenizer.from_pretrained(dir)`` loads it. Byte-level BPE can encode any
string (so a model's odd outputs always round-trip) and learns the world's syllables as
tokens, which keeps names short in tokens.

Each protocol tag (``<delegate>``, ``</delegate>``, ``<obs>``, ...) is one token. That is
what lets a sampler stop a turn at the closing tag's token id, and keeps the format cheap to
learn. The tags are added as ordinary (non-special) tokens so that decoding keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import AddedToken, Regex
from transformers import PreTrainedTokenizerFast

from .protocol import ALL_TAGS, close_tag, open_tag

PAD, EOS = "<pad>", "<eos>"
TAG_TOKENS = [t for tag in ALL_TAGS for t in (open_tag(tag), close_tag(tag))]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; the protocol tags, pad and eos are single tokens."""
    core = Tokenizer(models.BPE())
    # Pre-tokens are a word with its leading space (" Turu") or one other character (a digit,
    # a bracket, a newline). The protocol puts a space after every opening tag, so a name is
    # the same tokens wherever it stands, and a document id is the same digit tokens in a
    # search result and in a visit: copying is then an exact copy of token ids, the thing a
    # small transformer's induction heads learn first.
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|[^A-Za-z]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    # Byte-level BPE never needs an unknown token. Naming one anyway matters: AutoTokenizer
    # loads this tokenizer as the model type's class (Qwen2Tokenizer), which otherwise adds
    # its own "<|endoftext|>" as unk, one id beyond the model's embedding matrix.
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=EOS,
                                   padding_side="left", clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    tokenizer.save_pretrained(str(out))
