import pytest

from sapo.data import RLDataset, write_rows
from sapo.data.tasks import arithmetic
from sapo.errors import DataError
from sapo.models.tiny import build_char_tokenizer


@pytest.fixture(scope="module")
def arithmetic_tokenizer():
    # ids: 0 pad, 1 <|im_start|>, 2 <|im_end|>, 3 unk, then "0123456789+-*=" -> 4..17
    return build_char_tokenizer(arithmetic.CHARS)


@pytest.fixture(scope="module")
def printable_tokenizer():
    return build_char_tokenizer()


def row(prompt, extra_info=None, source="sapo/arithmetic"):
    return {
        "data_source": source,
        "prompt": prompt,
        "reward_model": {"ground_truth": "15"},
        "extra_info": extra_info,
        "_source": "f.parquet row 0",
    }


def test_raw_prompt_flag_skips_the_chat_template(arithmetic_tokenizer):
    dataset = RLDataset(
        [row([{"role": "user", "content": "12+3="}], {"raw_prompt": True})], arithmetic_tokenizer
    )
    item = dataset[0]
    # '1' -> 4 + 1, '2' -> 4 + 2, '+' -> 4 + 10, '3' -> 4 + 3, '=' -> 4 + 13
    assert item["prompt_ids"] == [5, 6, 14, 7, 17]
    assert item["prompt_text"] == "12+3="
    assert item["raw_prompt"] == [{"role": "user", "content": "12+3="}]
    assert item["data_source"] == "sapo/arithmetic"
    assert item["ground_truth"] == "15"
    assert item["extra_info"] == {"raw_prompt": True}
    assert item["index"] == 0


def test_plain_string_prompt_is_raw(arithmetic_tokenizer):
    assert RLDataset([row("9*9=")], arithmetic_tokenizer)[0]["prompt_ids"] == [13, 16, 13, 17]


def test_chat_prompt_goes_through_the_chat_template(printable_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    item = RLDataset([row(messages, {})], printable_tokenizer)[0]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert item["prompt_text"] == expected
    # 3 special tokens per message turn opened/closed: <|im_start|> x3, <|im_end|> x2, plus one id per char
    plain_chars = len(expected) - 3 * len("<|im_start|>") - 2 * len("<|im_end|>")
    assert len(item["prompt_ids"]) == 5 + plain_chars
    assert item["prompt_ids"][0] == printable_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert printable_tokenizer.decode(item["prompt_ids"]) == expected


def test_apply_chat_template_false_joins_message_contents(printable_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    item = RLDataset([row(messages, {})], printable_tokenizer, apply_chat_template=False)[0]
    assert item["prompt_text"] == "Be brief.\n2+2?"


def test_chat_prompt_without_a_template_is_an_error(arithmetic_tokenizer):
    tokenizer = build_char_tokenizer(arithmetic.CHARS, chat_template=None)
    with pytest.raises(DataError, match="f.parquet row 0: the tokenizer has no chat template"):
        RLDataset([row([{"role": "user", "content": "1+1="}], {})], tokenizer)
    assert RLDataset([row("1+1=")], tokenizer)[0]["prompt_ids"] == [5, 14, 5, 17]


def test_overlong_prompt_is_an_error_naming_the_row_by_default(arithmetic_tokenizer):
    rows = [row("1+1="), row("123+456=")]
    rows[1]["_source"] = "data/train.parquet row 7"
    with pytest.raises(DataError) as err:
        RLDataset(rows, arithmetic_tokenizer, max_prompt_length=5)
    message = str(err.value)
    assert "data/train.parquet row 7: prompt has 8 tokens, more than data.max_prompt_length=5" in message
    assert "data.filter_overlong_prompts" in message and "data.truncation" in message


def test_left_and_right_truncation_keep_the_end_or_the_start(arithmetic_tokenizer):
    rows = [row("123+456=")]  # ids 5 6 7 14 8 9 10 17
    left = RLDataset(rows, arithmetic_tokenizer, max_prompt_length=3, truncation="left")
    right = RLDataset(rows, arithmetic_tokenizer, max_prompt_length=3, truncation="right")
    assert left[0]["prompt_ids"] == [9, 10, 17]
    assert right[0]["prompt_ids"] == [5, 6, 7]


def test_filtering_drops_overlong_prompts_and_keeps_original_indices(arithmetic_tokenizer):
    rows = [row("123+456="), row("1+1="), row("99+999="), row("2+2=")]
    dataset = RLDataset(rows, arithmetic_tokenizer, max_prompt_length=4, filter_overlong_prompts=True)
    assert len(dataset) == 2
    assert dataset.num_filtered == 2
    assert [dataset[i]["index"] for i in range(2)] == [1, 3]
    with pytest.raises(DataError, match="every prompt is longer"):
        RLDataset(rows[:1], arithmetic_tokenizer, max_prompt_length=4, filter_overlong_prompts=True)


def test_bad_options_are_rejected(arithmetic_tokenizer):
    with pytest.raises(DataError, match="data.truncation must be one of error, left, right"):
        RLDataset([row("1=")], arithmetic_tokenizer, truncation="middle")
    with pytest.raises(DataError, match="max_prompt_length must be >= 1"):
        RLDataset([row("1=")], arithmetic_tokenizer, max_prompt_length=0)


def test_from_files_reads_parquet_and_skips_bad_rows_on_request(tmp_path, arithmetic_tokenizer):
    good = {k: v for k, v in row("4+5=").items() if k != "_source"}
    bad = dict(good, reward_model={"ground_truth": None})
    path = write_rows([good, bad, good], tmp_path / "train.parquet")
    with pytest.raises(DataError, match="row 1: field 'reward_model.ground_truth'"):
        RLDataset.from_files(str(path), arithmetic_tokenizer)
    dataset = RLDataset.from_files(str(path), arithmetic_tokenizer, on_bad_row="skip")
    assert len(dataset) == 2
    assert dataset[1]["prompt_ids"] == [8, 14, 9, 17]


def test_chat_template_kwargs_reach_the_template():
    # A template that reads a variable, as Qwen3's reads enable_thinking.
    template = "{% if enable_thinking is defined and not enable_thinking %}NT|{% endif %}" + (
        "{{ messages[0]['content'] }}"
    )
    tokenizer = build_char_tokenizer(chat_template=template)
    messages = [{"role": "user", "content": "2+2?"}]
    plain = RLDataset([row(messages)], tokenizer)[0]["prompt_text"]
    off = RLDataset([row(messages)], tokenizer, chat_template_kwargs={"enable_thinking": False})[0]
    assert plain == "2+2?"
    assert off["prompt_text"] == "NT|2+2?"


def test_reward_fn_key_selects_the_column_that_names_the_scorer(arithmetic_tokenizer):
    rows = [{**row("1+1="), "scorer": "openai/gsm8k"}]
    item = RLDataset(rows, arithmetic_tokenizer, reward_fn_key="scorer")[0]
    assert item["data_source"] == "openai/gsm8k"
    with pytest.raises(DataError, match="reward_fn_key"):
        RLDataset([row("1+1=")], arithmetic_tokenizer, reward_fn_key="scorer")
