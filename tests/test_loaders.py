"""A user's text survives every loader exactly (prunepriv.loaders)."""
import csv
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunepriv.data import load_records
from prunepriv.errors import DataError
from prunepriv.loaders import read_texts

# Arbitrary Unicode (surrogates excluded: they cannot be written as UTF-8), with the
# characters that broke earlier loaders made frequent.
TRICKY = st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\ufeff", '"', ",", "\x0b", "\x1c"])
TEXT = st.lists(st.one_of(st.characters(exclude_categories=("Cs",)), TRICKY), min_size=1, max_size=40).map("".join)
NON_BLANK = TEXT.filter(lambda t: t.strip() != "")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(texts=st.lists(NON_BLANK, min_size=1, max_size=6))
def test_jsonl_round_trip(tmp_path, texts):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert read_texts(path) == texts


@FAST
@given(texts=st.lists(NON_BLANK, min_size=1, max_size=6), bom=st.booleans())
def test_csv_round_trip(tmp_path, texts, bom):
    path = tmp_path / "data.csv"
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    assert read_texts(path) == texts


def _plain_representable(text: str) -> bool:
    """A text that a blank-line separated file can hold: no blank line of its own, no \\r."""
    lines = text.split("\n")
    return "\r" not in text and bool(text.strip()) and all(line.strip(" \t") for line in lines)


@FAST
@given(texts=st.lists(TEXT.filter(_plain_representable), min_size=1, max_size=6)
       .filter(lambda ts: not ts[0].startswith("\ufeff")))      # a leading U+FEFF is the file's BOM
def test_plain_text_round_trip(tmp_path, texts):
    path = tmp_path / "data.txt"
    path.write_bytes("\n\n".join(texts).encode("utf-8"))
    assert read_texts(path) == texts


def test_fields_the_old_loader_broke(tmp_path):
    texts = ["appear soon.\n\nBuy", "one\u2028two", "nel\x85here", "tab\tand \"quotes\", commas"]
    (tmp_path / "a.csv").write_text("\ufefftext\n" + "".join('"' + t.replace('"', '""') + '"\n' for t in texts),
                                    encoding="utf-8", newline="")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                      encoding="utf-8")
    assert [r.text for r in load_records(tmp_path / "a.csv")] == texts
    assert [r.text for r in load_records(tmp_path / "a.jsonl")] == texts


def test_windows_line_ends_and_long_fields(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"para one\r\nstill one\r\n\r\npara two\r\n")
    assert read_texts(tmp_path / "w.txt") == ["para one\nstill one", "para two"]
    long = "x" * 200_000                                         # over csv's default 131,072-character limit
    (tmp_path / "long.csv").write_text(f"text\n{long}\n")
    assert read_texts(tmp_path / "long.csv") == [long]


@pytest.mark.parametrize("name, data, message", [
    ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), r"latin1.csv:2: not UTF-8 \(byte 0xe9"),
    ("zw.csv", "\u200btext\nhello\n".encode(), r"columns: '\\u200btext'"),
    ("quote.csv", b'text\n"never closed\n', r"quote.csv:\d+: malformed CSV"),
])
def test_bad_bytes_and_invisible_names_are_shown(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_texts(tmp_path / name)


@pytest.mark.parametrize("tokenizer_name", ["byte", "embedded"])
def test_huge_records_are_cut_before_tokenizing_without_changing_kept_tokens(byte_tokenizer, tokenizer_name):
    import random

    from prunepriv.lm.models import load_tokenizer
    from prunepriv.lm.text import head, record_ids

    tokenizer = byte_tokenizer if tokenizer_name == "byte" else load_tokenizer("embedded")
    rng = random.Random(0)
    words = ["patient", "discharged", "2024-03-01", "Zürich", "mg", "—", "x" * 300, "\n\n", "ok.", "🙂"]
    for _ in range(20):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4000)))
        for max_length in (8, 128):
            cut = head(tokenizer, text, max_length)
            assert text.startswith(cut)
            assert record_ids(tokenizer, [cut], max_length) == record_ids(tokenizer, [text], max_length)
    assert len(head(tokenizer, "word " * 10_000_000, 128)) < 20_000    # 50 MB of text: a few kB tokenized
