"""Tiny, offline models and tokenizers for tests, examples and the built-in tasks.

Nothing here downloads anything. A character-level tokenizer is built with the ``tokenizers`` library and a
randomly initialised model from a ``transformers`` config; both are written with ``save_pretrained`` so that
every user of them goes through the real ``from_pretrained`` loading path.

Architectures: ``qwen3`` and ``llama`` (dense), ``qwen3_moe`` (mixture of experts). ``qwen2`` is left out on
purpose: transformers 5 forces the Qwen2 tokenizer class onto a saved qwen2 model and breaks a custom
tokenizer.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = "<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# string.printable: 10 digits, 52 letters, 32 punctuation marks, 6 whitespace characters (100 in all).
PRINTABLE_CHARS = string.printable

# ChatML, as Qwen uses it: <|im_start|>role\ncontent<|im_end|>\n ...
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_char_tokenizer(chars: str = PRINTABLE_CHARS, chat_template: str | None = CHATML_TEMPLATE):
    """A character-level fast tokenizer: one token per character of ``chars`` plus four special tokens.

    Token ids: 0 ``<|pad|>``, 1 ``<|im_start|>``, 2 ``<|im_end|>`` (the EOS token), 3 ``<|unk|>``, then the
    characters in the order given. Characters outside ``chars`` map to ``<|unk|>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    unique_chars = list(dict.fromkeys(chars))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in unique_chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] matches every character, newlines included, so each character is its own token.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return _wrap(backend, chat_template)


def _byte_symbols() -> list[str]:
    """The printable stand-in character of each byte 0..255, as byte-level BPE tokenizers (GPT-2, Qwen)
    spell bytes: printable Latin-1 bytes stand for themselves, the other 68 map to U+0100 onwards."""
    keep = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 256)}
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def build_byte_tokenizer(chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level fast tokenizer: one token per UTF-8 byte, so any text round-trips (no ``<|unk|>``).

    Token ids: the four special tokens as in `build_char_tokenizer`, then byte ``b`` is id ``4 + b``
    (vocabulary of 260).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return _wrap(backend, chat_template)


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of a tiny randomly initialised causal LM. Defaults: the project's benchmark model
    (Qwen3, hidden 256, intermediate 768, 4 layers, 4 heads, head_dim 64), about 3.4M parameters with a
    ~100-token vocabulary."""

    arch: str = "qwen3"  # qwen3 | llama | qwen3_moe
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 64
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    num_experts: int = 4  # qwen3_moe only
    num_experts_per_tok: int = 2  # qwen3_moe only
    moe_intermediate_size: int = 192  # qwen3_moe only


def tiny_model_config(spec: TinyModelSpec, tokenizer):
    """The ``transformers`` config of ``spec`` with the tokenizer's vocabulary and special-token ids."""
    from transformers import AutoConfig

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        rms_norm_eps=1e-6,
    )
    if spec.arch == "qwen3_moe":
        common.update(
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.num_experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size,
            decoder_sparse_step=1,
            norm_topk_prob=True,
        )
    elif spec.arch not in ("qwen3", "llama"):
        raise ValueError(f"unknown tiny architecture {spec.arch!r}: choose qwen3, llama or qwen3_moe")
    return AutoConfig.for_model(spec.arch, **common)


def build_tiny_model(
    out_dir: str | Path,
    spec: TinyModelSpec | None = None,
    chars: str = PRINTABLE_CHARS,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: str = "char",
) -> Path:
    """Build a randomly initialised model and its tokenizer and save both to ``out_dir``.

    ``tokenizer``: ``"char"`` (one token per character of ``chars``) or ``"byte"`` (one token per UTF-8
    byte; ``chars`` is ignored). Returns ``out_dir`` so it can be passed straight to
    ``AutoModelForCausalLM.from_pretrained``. The same ``(spec, chars, seed)`` always gives the same weights.
    """
    from transformers import AutoModelForCausalLM

    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    if tokenizer not in ("char", "byte"):
        raise ValueError(f"unknown tiny tokenizer {tokenizer!r}: choose 'char' or 'byte'")
    tokenizer = build_char_tokenizer(chars) if tokenizer == "char" else build_byte_tokenizer()
    config = tiny_model_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _wrap(backend, chat_template: str | None):
    """A transformers fast tokenizer over ``backend`` with the four special tokens, left padding and
    ``chat_template``."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=None,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[BOS],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
