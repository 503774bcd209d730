"""The config and checkpoint files of a Hugging Face Llama-family model, read without transformers.

`NativeConfig` parses ``config.json`` of a dense ``llama`` / ``qwen2`` / ``qwen3`` checkpoint into an object
with the attribute names of transformers' config classes (``hidden_size``, ``num_key_value_heads``,
``head_dim``, ``rope_theta``, ...), filling keys the file omits with transformers 5's class defaults, and
raises `UnsupportedArchitecture` for anything the native model does not reproduce exactly (another
architecture, a non-default RoPE type, sliding-window attention, ...) so that loading can fall back to
transformers. `read_weights` yields the tensors of ``model.safetensors`` or of the shards listed in
``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sapo.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

# transformers 5's class defaults for the keys a config.json may leave out (LlamaConfig, Qwen2Config,
# Qwen3Config). Qwen2 always has q/k/v biases and never an o_proj bias; that is structure, not a key.
_COMMON_DEFAULTS = dict(
    hidden_act="silu",
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    attention_dropout=0.0,
    attention_bias=False,
    mlp_bias=False,
    head_dim=None,
    num_key_value_heads=None,
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
    use_sliding_window=False,
    layer_types=None,
)
_MODEL_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(max_position_embeddings=32768),
    "qwen3": dict(max_position_embeddings=32768, head_dim=128),
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
DEFAULT_ROPE_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta


class UnsupportedArchitecture(UserError):
    """The checkpoint is not one the native model reproduces; load it with transformers instead."""


class NativeConfig:
    """Attribute view of a parsed ``config.json`` with transformers' attribute names.

    Every key of the file is an attribute; so are the resolved ``head_dim``, ``num_key_value_heads``,
    ``rope_theta`` and the class defaults of missing keys. Attributes set later (e.g. ``pad_token_id`` by the
    loader) are written back by `to_dict`, like transformers' ``save_pretrained`` does.
    """

    def __init__(self, raw: dict):
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitecture(
                f"model_type {model_type!r} is not a native architecture ({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        missing = [key for key in _REQUIRED if key not in raw]
        if missing:
            raise UserError(f"config.json of this {model_type} model lacks {missing}: re-save the model")
        values = {**_COMMON_DEFAULTS, **_MODEL_DEFAULTS[model_type], **raw}
        values["head_dim"] = values["head_dim"] or values["hidden_size"] // values["num_attention_heads"]
        values["num_key_value_heads"] = values["num_key_value_heads"] or values["num_attention_heads"]
        values["rope_theta"] = _rope_theta(raw)
        object.__setattr__(self, "_raw_keys", list(raw))
        object.__setattr__(self, "_initial", dict(values))
        self.__dict__.update(values)
        _check_supported(self)

    def to_dict(self) -> dict:
        """The original ``config.json`` keys with their current values, plus attributes changed since."""
        current = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out = {key: current[key] for key in self._raw_keys if key in current}
        out.update({k: v for k, v in current.items() if k not in out and self._initial.get(k, ...) != v})
        return out

    def __repr__(self) -> str:
        return f"NativeConfig({self.model_type}, hidden={self.hidden_size}, layers={self.num_hidden_layers})"


def _rope_theta(raw: dict) -> float:
    """``rope_theta`` from transformers 5's ``rope_parameters`` or the older top-level key; a non-default
    RoPE (llama3, yarn, linear, dynamic, partial rotary) is an `UnsupportedArchitecture`."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if any(isinstance(value, dict) for value in params.values()):
        raise UnsupportedArchitecture("per-layer-type RoPE parameters are not supported natively")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedArchitecture(f"RoPE type {rope_type!r} is not supported natively (only 'default')")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise UnsupportedArchitecture(f"partial_rotary_factor={partial} is not supported natively")
    return float(params.get("rope_theta", raw.get("rope_theta", DEFAULT_ROPE_THETA)))


def _check_supported(config: NativeConfig) -> None:
    reasons = []
    if config.hidden_act != "silu":
        reasons.append(f"hidden_act={config.hidden_act!r} (only 'silu')")
    if config.use_sliding_window or "sliding_attention" in (config.layer_types or []):
        reasons.append("sliding-window attention")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        reasons.append(f"pretraining_tp={config.pretraining_tp}")
    for name in ("final_logit_softcapping", "attn_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            reasons.append(f"{name}={getattr(config, name)}")
    if config.num_attention_heads % config.num_key_value_heads:
        reasons.append("num_attention_heads not a multiple of num_key_value_heads")
    if reasons:
        raise UnsupportedArchitecture(f"this {config.model_type} config uses {', '.join(reasons)}")


def read_config(path: Path) -> dict:
    """The parsed ``config.json`` of the model directory ``path``."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"{str(path)!r} has no config.json: not a Hugging Face model directory") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON ({exc}): re-save the model") from exc


def read_generation_config(path: Path) -> dict | None:
    file = Path(path) / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of ``path``: one ``model.safetensors`` or the shards of its index."""
    path = Path(path)
    index = path / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in dict.fromkeys(weight_map.values())]
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    raise UnsupportedArchitecture(
        f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {str(path)!r} (the native loader reads safetensors "
        "only; transformers can load other formats)"
    )


def read_weights(path: Path, device: str = "cpu"):
    """Yield ``(file, {name: tensor})`` per safetensors file of ``path``, loaded onto ``device``."""
    from safetensors.torch import load_file

    for file in weight_files(path):
        yield file, load_file(file, device=device)
