"""Reading a user's text files without changing a character of the text.

Three formats, chosen by extension:

* JSONL (``.jsonl``, ``.json``, ``.ndjson``): one JSON object per line, lines
  split on ``\\n`` only, so U+2028, U+0085 and other Unicode line breaks that
  ``json.dumps(ensure_ascii=False)`` leaves inside strings stay part of them;
* CSV (``.csv``): parsed by the :mod:`csv` module from the file object opened
  with ``newline=''`` (the documented way: line breaks inside quoted fields are
  kept), with no field-size limit;
* plain text (``.txt``, ``.text``, ``.md``): records separated by lines that
  are empty or hold only spaces and tabs; ``\\r\\n`` line ends read as ``\\n``.

Every format is read as UTF-8 with an optional byte-order mark (what
spreadsheets write as "CSV UTF-8"); a file that is not UTF-8 is a
:class:`~prunepriv.errors.DataError` naming the line of the first bad byte.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from prunepriv.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
TEXT_SUFFIXES = (".txt", ".text", ".md")
_BLANK_LINE = re.compile(r"\n[ \t]*(?:\n[ \t]*)*\n")


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """The texts of a user's JSONL, CSV or plain-text file, exactly as written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES + TEXT_SUFFIXES:
        raise DataError(f"data file {path}: unsupported extension {suffix!r} (use .jsonl, .csv or .txt)")
    raw = read_utf8(path)
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    if suffix in JSONL_SUFFIXES:
        texts = jsonl_texts(path, raw, text_field)
    elif suffix in CSV_SUFFIXES:
        texts = csv_texts(path, raw, text_field)
    else:
        texts = plain_texts(raw)
    if not texts:
        raise DataError(f"data file {path} has no texts")
    return texts


def read_utf8(path: Path) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped); one-line errors for I/O and decoding."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"save the file as UTF-8") from None


def jsonl_texts(path: Path, raw: str, text_field: str, allow_empty: bool = False) -> list[str]:
    """The ``text_field`` string of every non-blank line (lines split on ``\\n`` only);
    ``allow_empty`` keeps empty strings (a generated sample may be empty)."""
    texts = []
    for lineno, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if text_field not in obj:
            fields = ", ".join(ascii_name(k) for k in obj) or "none"
            raise DataError(f"{path}:{lineno}: missing text field {text_field!r} (fields: {fields})")
        value = obj[text_field]
        if not isinstance(value, str) or not (value.strip() or allow_empty):
            raise DataError(f"{path}:{lineno}: field {text_field!r} must be a {'' if allow_empty else 'non-empty '}string")
        texts.append(value)
    return texts


def csv_texts(path: Path, raw: str, text_field: str) -> list[str]:
    """The ``text_field`` column of every row with text; quoted line breaks kept."""
    reader = csv.DictReader(io.StringIO(raw, newline=""), strict=True)
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)          # the default, 131,072 characters, refuses long records
    try:
        return _csv_column(path, reader, text_field)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    finally:
        csv.field_size_limit(previous)


def _csv_column(path: Path, reader: csv.DictReader, text_field: str) -> list[str]:
    if reader.fieldnames is None or text_field not in reader.fieldnames:
        columns = ", ".join(ascii_name(c) for c in reader.fieldnames or []) or "none"
        raise DataError(f"{path}: missing text column {text_field!r} (columns: {columns})")
    texts = []
    for row in reader:
        value = row.get(text_field)
        if value is None or None in row:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV row (wrong number of fields)")
        if value.strip():
            texts.append(value)
    return texts


def plain_texts(raw: str) -> list[str]:
    """Records separated by blank lines (empty or spaces and tabs only); ``\\r\\n`` read as ``\\n``."""
    text = raw.replace("\r\n", "\n")
    return [part for part in _BLANK_LINE.split(text.strip("\n")) if part.strip()]


def ascii_name(name: object) -> str:
    """A column or field name with invisible characters shown (a stray BOM, a zero-width space)."""
    text = str(name)
    return text if text.isprintable() else ascii(text)
