"""Prompts as token ids: :class:`RLDataset` over rows in verl's layout (:mod:`sapo.data.rows`).

Rendering rule. A prompt is used *raw* (its text tokenised as is, with the tokenizer's own special tokens,
no chat template) when any of these holds:

1. ``prompt`` is a plain string;
2. the row's ``extra_info["raw_prompt"]`` is true (the built-in tasks set it); the message contents are
   joined with newlines;
3. the dataset is built with ``apply_chat_template=False``.

Otherwise the messages go through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` and
the text is tokenised without adding special tokens (the template already holds them).

``chat_template_kwargs`` go to ``apply_chat_template`` (``data.apply_chat_template_kwargs``, e.g.
``enable_thinking: false``). An item's ``data_source`` (what selects the scoring function and groups the
validation metrics) is the row's ``reward_fn_key`` column, ``data_source`` by default (verl's
``data.reward_fn_key``).

Length. A prompt longer than ``max_prompt_length`` tokens is dropped at construction when
``filter_overlong_prompts`` (the count is in ``num_filtered``), else handled by ``truncation``: ``"error"``
(default, as in verl) raises :class:`DataError` naming the row, ``"left"`` keeps the last
``max_prompt_length`` tokens, ``"right"`` the first.
"""

from __future__ import annotations

import logging

from sapo.data.rows import load_rows
from sapo.errors import DataError

log = logging.getLogger(__name__)
TRUNCATIONS = ("error", "left", "right")


class RLDataset:
    """Item ``i``: ``prompt_ids`` (list[int]), ``prompt_text`` (the rendered text), ``raw_prompt`` (the
    row's prompt as stored), ``data_source``, ``ground_truth``, ``extra_info`` (dict), ``ability`` and
    ``index`` (the row's position in ``rows``, kept when overlong rows are filtered)."""

    def __init__(
        self,
        rows: list[dict],
        tokenizer,
        *,
        prompt_key: str = "prompt",
        max_prompt_length: int = 512,
        filter_overlong_prompts: bool = False,
        truncation: str = "error",
        apply_chat_template: bool = True,
        chat_template_kwargs: dict | None = None,
        reward_fn_key: str = "data_source",
    ):
        if truncation not in TRUNCATIONS:
            raise DataError(f"data.truncation must be one of {', '.join(TRUNCATIONS)} (got {truncation!r})")
        if max_prompt_length < 1:
            raise DataError(f"data.max_prompt_length must be >= 1 (got {max_prompt_length})")
        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.max_prompt_length = max_prompt_length
        self.truncation = truncation
        self.apply_chat_template = apply_chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.reward_fn_key = reward_fn_key
        self._rows: list[dict] = []
        self._prompt_ids: list[list[int]] = []
        self._texts: list[str] = []
        self._indices: list[int] = []
        for index, row in enumerate(rows):
            if row.get(reward_fn_key) is None:
                raise DataError(
                    f"{_where(row, index)}: no {reward_fn_key!r} column, which data.reward_fn_key names as "
                    "the one that selects the scoring function: add it, or set data.reward_fn_key=data_source"
                )
            text, ids = self._render(row)
            if len(ids) > max_prompt_length and filter_overlong_prompts:
                continue
            self._rows.append(row)
            self._texts.append(text)
            self._prompt_ids.append(self._fit(ids, row, index))
            self._indices.append(index)
        self.num_filtered = len(rows) - len(self._rows)
        if self.num_filtered:
            log.warning("filtered %d prompt(s) longer than %d tokens", self.num_filtered, max_prompt_length)
        if not self._rows:
            raise DataError(
                f"every prompt is longer than data.max_prompt_length={max_prompt_length} tokens: raise it"
            )

    @classmethod
    def from_files(cls, paths, tokenizer, *, on_bad_row: str = "error", **kwargs) -> RLDataset:
        prompt_key = kwargs.get("prompt_key", "prompt")
        return cls(load_rows(paths, prompt_key=prompt_key, on_bad_row=on_bad_row), tokenizer, **kwargs)

    def is_raw(self, row: dict) -> bool:
        prompt = row[self.prompt_key]
        extra_info = row.get("extra_info") or {}
        return isinstance(prompt, str) or bool(extra_info.get("raw_prompt")) or not self.apply_chat_template

    def _render(self, row: dict) -> tuple[str, list[int]]:
        prompt = row[self.prompt_key]
        if self.is_raw(row):
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            return text, self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                f"{_where(row)}: the tokenizer has no chat template to render the chat prompt with: use a "
                "tokenizer with one, or build the dataset with apply_chat_template=False to use raw text"
            )
        text = self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False, **self.chat_template_kwargs
        )
        return text, self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _fit(self, ids: list[int], row: dict, index: int) -> list[int]:
        limit = self.max_prompt_length
        if len(ids) <= limit:
            return ids
        if self.truncation == "left":
            return ids[-limit:]
        if self.truncation == "right":
            return ids[:limit]
        raise DataError(
            f"{_where(row, index)}: prompt has {len(ids)} tokens, more than data.max_prompt_length={limit}: "
            "raise data.max_prompt_length, set data.filter_overlong_prompts=true to drop such "
            "prompts, or set data.truncation=left or right"
        )

    def __len__(self) -> int:
        return len(self._rows)

    def prompt_lengths(self) -> list[int]:
        """Each prompt's token count, as the rollout engine receives it."""
        return [len(ids) for ids in self._prompt_ids]

    def data_sources(self) -> list[str]:
        """The distinct values of the ``reward_fn_key`` column, in order of first appearance."""
        return list(dict.fromkeys(str(row[self.reward_fn_key]) for row in self._rows))

    def __getitem__(self, i: int) -> dict:
        row = self._rows[i]
        return {
            "prompt_ids": list(self._prompt_ids[i]),
            "prompt_text": self._texts[i],
            "raw_prompt": row[self.prompt_key],
            "data_source": row[self.reward_fn_key],
            "ground_truth": row["reward_model"]["ground_truth"],
            "extra_info": dict(row.get("extra_info") or {}),
            "ability": row.get("ability"),
            "index": self._indices[i],
        }


def _where(row: dict, index: int | None = None) -> str:
    return row.get("_source") or f"row {index}"
