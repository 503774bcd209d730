"""Load a Hugging Face causal language model and its tokenizer from a local directory.

Every model the project trains goes through `load_model_and_tokenizer`: it checks the directory, loads the
model in the requested dtype, loads the tokenizer, and prepares the tokenizer for batched generation (left
padding, a pad token). Anything a user can fix raises a `sapo.errors.UserError` that names the problem and
the fix.

Two model implementations (``impl``): ``"native"`` is `sapo.models.native` (pure torch, dense Llama / Qwen2 /
Qwen3 with the default RoPE; transformers' modeling code is never imported), ``"hf"`` is
``AutoModelForCausalLM`` (any causal LM, e.g. Qwen3-MoE). ``"auto"`` (the default) takes the native one
whenever it supports the checkpoint's architecture and transformers otherwise.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from sapo.errors import UserError
from sapo.models.dtypes import resolve_dtype


def check_model_dir(path: Path) -> dict:
    """The parsed config.json of ``path``; a UserError when the directory or its config is missing."""
    if not path.exists():
        raise UserError(
            f"model path {str(path)!r} does not exist: set actor_rollout_ref.model.path to a local directory "
            "holding a Hugging Face model (config.json, weights, tokenizer files)"
        )
    if not path.is_dir():
        raise UserError(f"model path {str(path)!r} is a file: point it at the model's directory instead")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"{str(path)!r} has no config.json, so it is not a Hugging Face model directory: save the model "
            "with model.save_pretrained(dir) or download a full checkpoint there"
        )
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file} is not valid JSON ({exc}): re-save the model") from exc


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_weights(path: Path) -> None:
    """A UserError when ``path`` has no weights file, or a safetensors file whose header cannot be read
    (a truncated copy: the header says how long the file must be, so this costs one small read)."""
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise UserError(
            f"{str(path)!r} has a config.json but no weights (looked for {', '.join(_WEIGHT_FILES)}; found "
            f"{present}): copy the checkpoint's weights there, or save it with model.save_pretrained(dir)"
        )
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"{file} cannot be read ({exc}; {file.stat().st_size} bytes): the file is truncated or "
                "corrupt, e.g. an interrupted copy or download; copy it again"
            ) from exc


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _check_causal_lm(path: Path, config_json: dict) -> None:
    """A UserError when the checkpoint lists its architectures and none of them is a causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal_lms

    architectures = config_json.get("architectures") or []
    known = {name for value in causal_lms.values() for name in ([value] if isinstance(value, str) else value)}
    if architectures and not any(name in known for name in architectures):
        raise UserError(
            f"{str(path)!r} holds a {architectures} checkpoint, which is not a causal language model: RL "
            "training needs a model that AutoModelForCausalLM can load (e.g. Qwen3ForCausalLM, "
            "LlamaForCausalLM); save the *ForCausalLM class, not the bare backbone"
        )


IMPLS = ("auto", "native", "hf")


def _native_reason(config_json: dict, impl: str) -> str | None:
    """None when the native model will load this checkpoint, else why not (``impl="native"``: an error)."""
    from sapo.models.native_config import NativeConfig, UnsupportedArchitecture

    if impl not in IMPLS:
        raise UserError(f"unknown model impl {impl!r}: set actor_rollout_ref.model.impl to one of {IMPLS}")
    if impl == "hf":
        return "impl=hf"
    try:
        NativeConfig(config_json)
        return None
    except UnsupportedArchitecture as exc:
        if impl == "native":
            raise UserError(
                f"the native model cannot load this checkpoint: {exc}; set actor_rollout_ref.model.impl=auto "
                "(or hf) to load it with transformers"
            ) from exc
        return str(exc)


def _load_model(path: Path, native: bool, dtype: torch.dtype, device, impl: str):
    """The native model when ``native`` (falling back to transformers under ``impl="auto"`` when the
    directory has no safetensors weights), else transformers'."""
    from sapo.models.native import load_native_model
    from sapo.models.native_config import UnsupportedArchitecture

    if native:
        try:
            return load_native_model(path, dtype=dtype, device=device)
        except UnsupportedArchitecture as exc:
            if impl == "native":
                raise UserError(f"{exc}; set actor_rollout_ref.model.impl=auto to use transformers") from exc
    return _load_hf_model(path, dtype, device)


def _load_hf_model(path: Path, dtype: torch.dtype, device):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise UserError(
                f"{str(path)!r} holds a {config.model_type!r} model, which is not a causal language model "
                f"(architectures: {getattr(config, 'architectures', None)}): RL training needs a model that "
                "AutoModelForCausalLM can load, e.g. Qwen3ForCausalLM or LlamaForCausalLM"
            ) from exc
        raise
    if device is not None:
        model = model.to(device)
    return model


def _prepare_tokenizer(tokenizer, model, path: Path):
    """Left padding (generation appends on the right) and a pad token (falls back to EOS, with a note)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(
                f"the tokenizer in {str(path)!r} has neither a pad token nor an EOS token: add one with "
                "tokenizer.add_special_tokens({'pad_token': ...}) and save it again"
            )
        warnings.warn(
            f"the tokenizer in {str(path)!r} has no pad token; using its EOS token {tokenizer.eos_token!r} "
            "as the pad token (padding is masked out, so this only affects the stored pad id)",
            stacklevel=3,
        )
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_tokenizer(
    path: Path,
    model,
    *,
    fix: str = "save the tokenizer next to the model with tokenizer.save_pretrained(dir)",
):
    """The tokenizer saved in ``path``, checked against ``model``'s vocabulary, padding on the left and with
    a pad token. ``fix`` ends the error message when the directory holds no usable tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"no usable tokenizer in {str(path)!r} ({type(exc).__name__}: {exc}): {fix}") from exc
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"the tokenizer in {str(path)!r} has {len(tokenizer)} tokens but the model's vocabulary has "
            f"{model.config.vocab_size}: resize the embeddings (model.resize_token_embeddings) and save "
            "again, or use a tokenizer that fits the vocabulary"
        )
    return _prepare_tokenizer(tokenizer, model, path)


def load_model_and_tokenizer(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    require_chat_template: bool = False,
    impl: str = "auto",
):
    """Load ``(model, tokenizer)`` from the local directory ``path``.

    The model is `sapo.models.native.NativeCausalLM` or transformers' ``AutoModelForCausalLM`` (``impl``:
    ``"auto"`` | ``"native"`` | ``"hf"``, see the module docstring), in ``dtype`` (float32 by default;
    bfloat16 for large models), on ``device`` when given (else the CPU), in eval mode as ``from_pretrained``
    leaves it. The tokenizer pads on the left and always has a pad token. With
    ``require_chat_template=True`` a tokenizer without a chat template is an error (the data layer renders
    prompts with it).
    """
    path = Path(path).expanduser()
    torch_dtype = resolve_dtype(dtype)
    config_json = check_model_dir(path)
    check_weights(path)
    native = _native_reason(config_json, impl) is None
    if not native:
        _check_causal_lm(path, config_json)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(
            f"no tokenizer files in {str(path)!r} (looked for {', '.join(_TOKENIZER_FILES)}): save the "
            "tokenizer next to the model with tokenizer.save_pretrained(dir)"
        )
    model = _load_model(path, native, torch_dtype, device, impl)
    tokenizer = load_tokenizer(path, model)
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer in {str(path)!r} has no chat template, and prompts are rendered with it: use an "
            "instruct/chat checkpoint, add a template (tokenizer.chat_template = ...; save_pretrained), or "
            "give the data as plain text prompts"
        )
    return model, tokenizer
