"""docs/contract.md and the code name the same topics and events, and its
examples are exactly what the models build: the two cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

from messaging.topics import all_topics
from schemas.contract import EVENT_MODELS, TOPIC_EVENT_TYPES, FailureReason
from schemas.envelope import encode_event, parse_event
from schemas.examples import examples, markdown

DOC = (Path(__file__).parents[2] / "docs" / "contract.md").read_text()
NAMED = set(re.findall(r"(?<!`)`([^`\n]+)`(?!`)", DOC))  # inline code, not fences


def test_the_contract_names_every_topic_and_every_external_event_type() -> None:
    assert not set(all_topics()) - NAMED, sorted(set(all_topics()) - NAMED)
    assert not set(EVENT_MODELS) - NAMED, sorted(set(EVENT_MODELS) - NAMED)
    assert not {r.value for r in FailureReason} - NAMED


def test_the_topics_table_gives_each_external_topic_its_event_types() -> None:
    for topic, types in TOPIC_EVENT_TYPES.items():
        row = next(line for line in DOC.splitlines() if line.startswith(f"| `{topic}` |"))
        assert set(re.findall(r"`(\w+)`", row.split("|")[4])) == set(types), row


def test_the_examples_are_what_the_models_build_and_parse_back() -> None:
    assert markdown() in DOC  # regenerate with `python -m schemas.examples`
    built = examples()
    assert set(built) == set(EVENT_MODELS)
    for name, event in built.items():
        raw = json.dumps(event).encode()
        for topic in (t for t, types in TOPIC_EVENT_TYPES.items() if name in types):
            parsed, _ = parse_event(raw, TOPIC_EVENT_TYPES[topic])
            assert json.loads(encode_event(parsed)) == event


def test_the_docs_link_the_contract_inside_the_project() -> None:
    root = Path(__file__).parents[2]
    for doc in (root / "README.md", *(root / "docs").glob("*.md")):
        text = doc.read_text()
        assert "../shared/" not in text and "/work/" not in text, doc
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", text):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}"
