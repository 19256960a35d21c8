"""Synthetic corpus, canaries, splits, user-file loaders, general English."""
from __future__ import annotations

import pytest

from prunepriv.data import SECRET_DIGITS, general_english, load_records, synthetic_corpus, user_corpus
from prunepriv.errors import DataError


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(seed=7, n_patients=40, notes_per_patient=3, n_canaries=4,
                            canary_repetitions=[1, 3], n_heldout_canaries=3)


def test_pii_spans_point_at_their_values(corpus):
    kinds = set()
    for records in corpus.splits.values():
        for record in records:
            for item in record.pii:
                assert record.text[item.start:item.end] == item.value
                kinds.add(item.kind)
    assert {"name", "mrn", "dob", "phone", "address", "email", "clinician"} <= kinds


def test_note_types_vary(corpus):
    kinds = {r.kind for r in corpus.splits["train"] if r.canary is None}
    assert len(kinds) >= 5


def test_same_seed_same_corpus_other_seed_other_corpus(corpus):
    again = synthetic_corpus(seed=7, n_patients=40, notes_per_patient=3, n_canaries=4,
                             canary_repetitions=[1, 3], n_heldout_canaries=3)
    other = synthetic_corpus(seed=8, n_patients=40, notes_per_patient=3, n_canaries=4,
                             canary_repetitions=[1, 3], n_heldout_canaries=3)
    assert corpus.texts("train") == again.texts("train")
    assert corpus.texts("train") != other.texts("train")


def test_the_corpus_does_not_change_with_the_calendar_day(corpus, monkeypatch):
    """Faker counts ages back from today: a corpus drawn on another day had other dates of birth, so a run
    crossing midnight trained two stages on different notes. Ages now count from a fixed day."""
    import datetime

    import faker.providers.date_time as faker_dates

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 2, 3, tzinfo=tz)

    monkeypatch.setattr(faker_dates, "datetime", Later)
    later = synthetic_corpus(seed=7, n_patients=40, notes_per_patient=3, n_canaries=4,
                             canary_repetitions=[1, 3], n_heldout_canaries=3)
    assert later.texts("train") == corpus.texts("train")
    from faker import Faker
    fake = Faker()
    fake.seed_instance(0)
    assert fake.date_of_birth(maximum_age=1).year >= 2029      # the patch reaches Faker's own clock


def test_splits_are_disjoint_by_patient(corpus):
    patients = {s: {r.patient for r in rs if r.patient} for s, rs in corpus.splits.items()}
    assert not patients["train"] & patients["heldout"]
    assert not patients["train"] & patients["calibration"]
    assert not patients["heldout"] & patients["calibration"]
    assert all(patients.values())


def test_heldout_identities_never_reach_training_text(corpus):
    train_text = "\n".join(corpus.texts("train"))
    for kind, value in corpus.pii_values("heldout"):
        if kind in ("mrn", "phone", "email"):
            assert value not in train_text


def test_canaries_inserted_exactly_as_often_as_asked(corpus):
    train_texts = corpus.texts("train")
    trained = [c for c in corpus.canaries if c.in_train]
    held = [c for c in corpus.canaries if not c.in_train]
    assert [c.repetitions for c in trained] == [1, 3, 1, 3] and len(held) == 3
    for canary in trained:
        assert train_texts.count(canary.text) == canary.repetitions
    everything = "\n".join(t for s in corpus.splits for t in corpus.texts(s))
    for canary in held:
        assert canary.secret not in everything
    assert all(len(c.secret) == SECRET_DIGITS and c.secret.isdigit() for c in corpus.canaries)
    assert not any(r.canary for r in corpus.splits["heldout"] + corpus.splits["calibration"])


def test_jsonl_csv_and_text_loaders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first note"}\n\n{"text": "second", "x": 1}\n')
    (tmp_path / "b.csv").write_text('id,body\n1,"hello, world"\n2,again\n')
    (tmp_path / "c.txt").write_text("para one\nstill one\n\npara two\n")
    assert [r.text for r in load_records(tmp_path / "a.jsonl")] == ["first note", "second"]
    assert [r.text for r in load_records(tmp_path / "b.csv", "body")] == ["hello, world", "again"]
    assert [r.text for r in load_records(tmp_path / "c.txt")] == ["para one\nstill one", "para two"]


@pytest.mark.parametrize("name, content, field, message", [
    ("empty.jsonl", "", "text", "is empty"),
    ("blank.txt", "\n\n  \n", "text", "is empty"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', "text", r"bad.jsonl:2: malformed JSON"),
    ("field.jsonl", '{"text": "ok"}\n{"body": "no"}\n', "text", r"field.jsonl:2: missing text field 'text' \(fields: body\)"),
    ("list.jsonl", '["a"]\n', "text", r"list.jsonl:1: expected a JSON object"),
    ("col.csv", "a,b\n1,2\n", "text", r"missing text column 'text' \(columns: a, b\)"),
    ("rows.csv", "text,b\nok,2\nbad,2,3\n", "text", r"rows.csv:3: malformed CSV row"),
    ("x.parquet", "zzz", "text", "unsupported extension"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, field, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_records(path, field)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_records(tmp_path / "nope.jsonl")


def test_user_corpus_splits_and_canaries(tmp_path):
    records = [load_records_text(i) for i in range(50)]
    corpus = user_corpus(records, seed=1, n_canaries=2, canary_repetitions=[2], n_heldout_canaries=1)
    ids = {s: {r.id for r in rs if not r.canary} for s, rs in corpus.splits.items()}
    assert sum(len(v) for v in ids.values()) == 50
    assert not ids["train"] & ids["heldout"]
    assert sum(r.canary is not None for r in corpus.splits["train"]) == 4


def load_records_text(i: int):
    from prunepriv.data import Record

    return Record(f"R{i}", f"user text number {i}")


def test_general_english_is_prose_and_seeded():
    a, b = general_english(10, seed=0), general_english(10, seed=0)
    assert a == b and len(a) == 10
    assert general_english(10, seed=1) != a
    assert all(len(p) >= 200 and (p[0].isupper() or p[0] in "“\"") for p in a)
    assert all("**" not in p for p in general_english(100))
    assert len(set(general_english(100))) == 100
    with pytest.raises(DataError, match="available"):
        general_english(10**6)


def test_audit_canaries_have_longer_secrets_and_change_no_other_draw(monkeypatch):
    """Audit secrets are AUDIT_SECRET_DIGITS long; their extra digits come from the audit's own RNG, so the
    exposure canaries, the splits and the training order are the same whatever the audit's secret length."""
    import prunepriv.data as data
    from prunepriv.config import AUDIT_SECRET_DIGITS

    def build():
        return synthetic_corpus(seed=0, n_patients=30, n_canaries=4, canary_repetitions=[1, 3],
                                n_heldout_canaries=2, n_audit_canaries=6)
    corpus = build()
    audit = [c for c in corpus.canaries if c.purpose == "audit"]
    assert len(audit) == 6 and AUDIT_SECRET_DIGITS > SECRET_DIGITS
    assert all(len(c.secret) == AUDIT_SECRET_DIGITS and c.secret.isdigit() for c in audit)
    assert all(len(c.secret) == SECRET_DIGITS for c in corpus.canaries if c.purpose != "audit")
    monkeypatch.setattr(data, "AUDIT_SECRET_DIGITS", SECRET_DIGITS)
    short = build()
    assert [c.secret[:SECRET_DIGITS] for c in audit] == [c.secret for c in short.canaries if c.purpose == "audit"]
    assert [c.text for c in corpus.canaries if c.purpose != "audit"] == [c.text for c in short.canaries if c.purpose != "audit"]
    strip = {c.text: c.prefix for c in audit} | {c.text: c.prefix for c in short.canaries if c.purpose == "audit"}
    order = [[strip.get(r.text, r.text) for r in c.splits["train"]] for c in (corpus, short)]
    assert order[0] == order[1]
