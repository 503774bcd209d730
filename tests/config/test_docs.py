from pathlib import Path

from sapo.config import IGNORED_KEYS, all_keys
from sapo.config.docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_contains_the_generated_reference():
    # regenerate with: python -m sapo.config.docs (and paste under "Reference (generated)")
    assert render() in DOC.read_text(), "docs/configuration.md is stale: rerun `python -m sapo.config.docs`"


def test_reference_lists_every_key_and_every_ignored_pattern():
    text = render()
    for key in all_keys():
        assert f"| `{key}` |" in text
    for rule in IGNORED_KEYS:
        assert f"| `{rule.pattern}` |" in text
