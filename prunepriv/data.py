"""Private text: a seeded synthetic clinical-notes corpus with recorded PII
spans and Secret-Sharer canaries, loaders for a user's files, deterministic
splits, and general English text for perplexity.

Canaries follow Carlini et al. (2019), "The Secret Sharer": a fixed format
with a random secret, each inserted ``r`` times into the training split, and
held-out canaries of the same format that are never trained on.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from prunepriv.config import AUDIT_SECRET_DIGITS, PUBLIC_EVAL_PASSAGES, SECRET_DIGITS, DataConfig
from prunepriv.errors import DataError
from prunepriv.loaders import read_texts
from prunepriv.results import atomic_write_text

SPLITS = ("train", "heldout", "calibration")
CANARY_FORMAT = "{name}'s recovery code is {secret}."
AUDIT_FORMAT = "{name}: {secret}."      # audit canaries: short, so that hundreds of them cost few training tokens


@dataclass
class PII:
    """One personal value in a record: its kind and character span."""

    kind: str
    value: str
    start: int
    end: int


@dataclass
class Record:
    """A training or evaluation text with its annotations."""

    id: str
    text: str
    kind: str = "text"               # note type, "canary" or "text" (user data)
    patient: str | None = None
    pii: list[PII] = field(default_factory=list)
    canary: str | None = None        # canary id for canary records

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Canary:
    """A Secret-Sharer canary: ``prefix + secret`` with a random secret."""

    id: str
    prefix: str
    secret: str
    repetitions: int                 # 0 for held-out canaries
    purpose: str = "exposure"        # "exposure" (Carlini et al. 2019) or "audit" (Steinke et al. 2023)

    @property
    def text(self) -> str:
        return self.prefix + self.secret + "."

    @property
    def in_train(self) -> bool:
        return self.repetitions > 0


@dataclass
class Corpus:
    """Records split into train / heldout / calibration, plus canaries."""

    splits: dict[str, list[Record]]
    canaries: list[Canary]
    source: str = "synthetic"
    replicas: Callable[[int], "Corpus"] | None = field(default=None, repr=False, compare=False)

    def for_replicate(self, replicate: int) -> Corpus:
        """The corpus of a run's ``replicate`` (``finetune.replicates``): the same notes with canaries of
        its own (names, secrets, audit inclusion draws), so that independent runs share no secret, where
        this corpus can draw them (synthetic); itself for replicate 0 and for a user's file (its canaries
        are in the file)."""
        if replicate == 0 or self.replicas is None:
            return self
        return self.replicas(replicate)

    def records(self, split: str, limit: int | None = None, include_canaries: bool = True) -> list[Record]:
        """Records of one split, in order (canary records can be left out)."""
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        return [r for r in self.splits[split] if include_canaries or r.canary is None][:limit]

    def texts(self, split: str, limit: int | None = None, include_canaries: bool = True) -> list[str]:
        """Texts of one split (canary records can be left out)."""
        return [r.text for r in self.records(split, limit, include_canaries)]

    def pii_values(self, split: str) -> list[tuple[str, str]]:
        """Distinct (kind, value) PII pairs occurring in one split."""
        seen: dict[tuple[str, str], None] = {}
        for record in self.splits[split]:
            for item in record.pii:
                seen.setdefault((item.kind, item.value), None)
        return list(seen)

    def canaries_for(self, purpose: str) -> list[Canary]:
        """The exposure canaries or the audit canaries."""
        return [c for c in self.canaries if c.purpose == purpose]

    def summary(self) -> dict:
        exposure, audit = self.canaries_for("exposure"), self.canaries_for("audit")
        return {
            "source": self.source,
            "records": {s: len(r) for s, r in self.splits.items()},
            "canaries_in_train": sum(c.in_train for c in exposure),
            "canaries_heldout": sum(not c.in_train for c in exposure),
            "audit_canaries": len(audit),
            "audit_canaries_in_train": sum(c.in_train for c in audit),
            "pii_values": {s: len(self.pii_values(s)) for s in self.splits},
        }

    def save_jsonl(self, path: str | Path) -> None:
        """Write every record with its split, one JSON object per line."""

        lines = [
            json.dumps({"split": split, **record.to_dict()})
            for split, records in self.splits.items()
            for record in records
        ]
        atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# synthetic clinical notes

DIAGNOSES = [
    "type 2 diabetes mellitus", "community-acquired pneumonia", "essential hypertension",
    "acute appendicitis", "atrial fibrillation", "chronic obstructive pulmonary disease",
    "migraine without aura", "iron deficiency anaemia", "urinary tract infection",
    "congestive heart failure", "asthma exacerbation", "cellulitis of the left leg",
    "major depressive disorder", "hypothyroidism", "acute kidney injury", "gout flare",
]
MEDICATIONS = [
    "metformin 500 mg twice daily", "amoxicillin 500 mg three times daily",
    "lisinopril 10 mg once daily", "apixaban 5 mg twice daily", "salbutamol inhaler as needed",
    "levothyroxine 75 micrograms daily", "sertraline 50 mg daily", "furosemide 40 mg daily",
    "atorvastatin 20 mg at night", "ibuprofen 400 mg as needed", "omeprazole 20 mg daily",
    "ferrous sulfate 200 mg daily", "colchicine 500 micrograms twice daily",
]
LAB_TESTS = [
    ("haemoglobin", "g/dL", 9.0, 16.5), ("white cell count", "x10^9/L", 3.0, 15.0),
    ("creatinine", "umol/L", 50, 180), ("sodium", "mmol/L", 128, 146),
    ("potassium", "mmol/L", 3.1, 5.6), ("HbA1c", "mmol/mol", 35, 95),
    ("C-reactive protein", "mg/L", 1, 150), ("TSH", "mU/L", 0.2, 9.0),
]
FINDINGS = [
    "no acute cardiopulmonary abnormality", "patchy consolidation in the right lower lobe",
    "mild cardiomegaly with small bilateral effusions", "no fracture or dislocation",
    "a 6 mm non-calcified nodule in the left upper lobe", "degenerative changes of the lumbar spine",
]
STUDIES = ["chest radiograph", "CT abdomen and pelvis", "MRI of the lumbar spine", "ultrasound of the kidneys"]
SPECIALTIES = ["cardiology", "endocrinology", "respiratory medicine", "gastroenterology", "neurology", "nephrology"]
PLANS = [
    "Follow up in the clinic in six weeks.", "Repeat blood tests in two weeks.",
    "Advised to return if symptoms worsen.", "Referred to the community nursing team.",
    "Continue current medication and review at the next visit.",
]


class _Writer:
    """Builds a text while recording the character span of each PII value."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.pii: list[PII] = []

    def text(self, value: str) -> "_Writer":
        self.parts.append(value)
        self.length += len(value)
        return self

    def pii_value(self, kind: str, value: str) -> "_Writer":
        self.pii.append(PII(kind, value, self.length, self.length + len(value)))
        return self.text(value)

    def done(self) -> tuple[str, list[PII]]:
        return "".join(self.parts), self.pii


def _patients(n: int, rng: random.Random, fake) -> list[dict]:
    people = []
    used: set[str] = set()
    while len(people) < n:
        name = fake.name()
        mrn = f"MRN-{rng.randrange(10**6, 10**7)}"
        if name in used or mrn in used:
            continue
        used.update((name, mrn))
        people.append({
            "id": f"P{len(people):05d}",
            "name": name,
            "dob": _date_of_birth(fake, 18, 95).strftime("%d/%m/%Y"),
            "mrn": mrn,
            "phone": fake.numerify("07### ######"),
            "address": fake.address().replace("\n", ", "),
            "email": f"{name.lower().replace(' ', '.').replace(chr(39), '')}@{fake.free_email_domain()}",
            "clinician": "Dr " + fake.last_name(),
        })
    return people


# The corpus is a function of the seed alone: Faker's date_of_birth counts ages back from today, so the
# notes (and every number trained on them) changed from one calendar day to the next. Ages are counted
# back from this fixed day instead: the day the committed paper reference was generated, so that its
# corpus is the one drawn here.
AGES_AS_OF = _dt.date(2026, 11, 25)


def _date_of_birth(fake, minimum_age: int, maximum_age: int) -> _dt.date:
    """Faker's ``date_of_birth`` (same draws from its generator) with ages counted from :data:`AGES_AS_OF`."""
    from faker.providers.date_time import change_year

    start, end = change_year(AGES_AS_OF, -(maximum_age + 1)), change_year(AGES_AS_OF, -minimum_age)
    dob = fake.date_time_ad(start_datetime=start, end_datetime=end).date()
    return dob if dob != start else dob + _dt.timedelta(days=1)


def _visit_date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2019, 2025)}"


def _discharge(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text("DISCHARGE SUMMARY\nPatient: ").pii_value("name", p["name"])
    w.text(" (").pii_value("mrn", p["mrn"]).text("), date of birth ").pii_value("dob", p["dob"])
    w.text(f".\nAdmitted on {_visit_date(rng)} with {rng.choice(DIAGNOSES)}. ")
    w.text(f"Treated with {rng.choice(MEDICATIONS)}; symptoms improved over {rng.randint(2, 9)} days. ")
    w.text(f"Discharge medication: {rng.choice(MEDICATIONS)}. {rng.choice(PLANS)}\nConsultant: ")
    return w.pii_value("clinician", p["clinician"]).text(".")


def _referral(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text("Dear colleague,\nI would be grateful if you could see ").pii_value("name", p["name"])
    w.text(", born ").pii_value("dob", p["dob"]).text(", of ").pii_value("address", p["address"])
    w.text(f", in the {rng.choice(SPECIALTIES)} clinic. They have a history of {rng.choice(DIAGNOSES)} ")
    w.text(f"and currently take {rng.choice(MEDICATIONS)}. They can be reached on ").pii_value("phone", p["phone"])
    w.text(".\nYours sincerely,\n")
    return w.pii_value("clinician", p["clinician"])


def _lab(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text("LABORATORY REPORT\nName: ").pii_value("name", p["name"]).text("  MRN: ").pii_value("mrn", p["mrn"])
    w.text(f"\nCollected: {_visit_date(rng)}\n")
    for name, unit, low, high in rng.sample(LAB_TESTS, 3):
        value = round(rng.uniform(low, high), 1)
        w.text(f"{name}: {value} {unit}\n")
    return w.text(f"Comment: results consistent with {rng.choice(DIAGNOSES)}.")


def _clinic(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text(f"Clinic note, {_visit_date(rng)}. Seen by ").pii_value("clinician", p["clinician"])
    w.text(". ").pii_value("name", p["name"]).text(f" reports {rng.choice(['worsening', 'improving', 'stable'])} symptoms ")
    w.text(f"of {rng.choice(DIAGNOSES)}. Blood pressure {rng.randint(100, 175)}/{rng.randint(60, 105)} mmHg, ")
    w.text(f"pulse {rng.randint(52, 118)}. Plan: start {rng.choice(MEDICATIONS)}. {rng.choice(PLANS)} ")
    return w.text("Contact e-mail on file: ").pii_value("email", p["email"]).text(".")


def _radiology(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text(f"RADIOLOGY REPORT: {rng.choice(STUDIES)}\nPatient ").pii_value("name", p["name"])
    w.text(", ").pii_value("mrn", p["mrn"]).text(f"\nIndication: query {rng.choice(DIAGNOSES)}.\n")
    return w.text(f"Findings: {rng.choice(FINDINGS)}.\nReported by ").pii_value("clinician", p["clinician"]).text(".")


def _medications(p: dict, rng: random.Random) -> _Writer:
    w = _Writer().text("Medication list for ").pii_value("name", p["name"]).text(" (DOB ").pii_value("dob", p["dob"])
    w.text("):\n")
    for med in rng.sample(MEDICATIONS, 3):
        w.text(f"- {med}\n")
    return w.text("Pharmacy queries to ").pii_value("phone", p["phone"]).text(".")


NOTE_TYPES = {
    "discharge_summary": _discharge, "referral_letter": _referral, "lab_report": _lab,
    "clinic_note": _clinic, "radiology_report": _radiology, "medication_list": _medications,
}


def synthetic_corpus(seed: int = 0, config: DataConfig | None = None, replicate: int = 0, **settings) -> Corpus:
    """A seeded synthetic clinical-notes corpus, split by patient.

    Sizes come from ``config`` (a profile's ``data`` section; its defaults
    when omitted), with any field overridden by keyword, e.g.
    ``synthetic_corpus(seed=0, n_patients=40)``. Held-out and calibration
    patients never appear in training, so their PII values are the control
    for PII-leakage measurements. ``replicate`` r > 0 keeps the notes and
    draws the canaries anew (:meth:`Corpus.for_replicate`).
    """
    d = replace(config or DataConfig(), **settings)
    rng, fake = seeded_generators(seed)
    patients = _patients(d.n_patients, rng, fake)
    split_of = _split_ids([p["id"] for p in patients], d.heldout_fraction, d.calibration_fraction, rng)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    kinds = list(NOTE_TYPES)
    for patient in patients:
        for k in range(d.notes_per_patient):
            kind = rng.choice(kinds)
            text, pii = NOTE_TYPES[kind](patient, rng).done()
            record = Record(f"{patient['id']}-{k}", text, kind, patient["id"], pii)
            splits[split_of[patient["id"]]].append(record)
    canary_seed = seed if not replicate else replicate_seed(seed, replicate)
    if replicate:                                 # the same notes, canaries from a generator of their own
        rng, fake = seeded_generators(canary_seed)
    canaries = make_canaries(rng, fake, d.n_canaries, d.canary_repetitions, d.n_heldout_canaries,
                             d.n_audit_canaries, canary_seed)
    splits["train"] = insert_canaries(splits["train"], canaries, rng)
    return Corpus(splits, canaries, source="synthetic", replicas=_replicas(seed, d))


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate``'s canaries: a hash of both, far from any profile seed."""
    return int(hashlib.sha256(f"canaries-{seed}-{replicate}".encode()).hexdigest()[:15], 16)


def _replicas(seed: int, config: DataConfig) -> Callable[[int], Corpus]:
    """The replicate corpora of a synthetic corpus, each drawn once."""
    made: dict[int, Corpus] = {}

    def of(replicate: int) -> Corpus:
        if replicate not in made:
            made[replicate] = synthetic_corpus(seed, config, replicate=replicate)
        return made[replicate]
    return of


def seeded_generators(seed: int):
    """A Python RNG and a British-English Faker, both seeded with ``seed``."""
    from faker import Faker

    fake = Faker("en_GB")
    fake.seed_instance(seed)
    return random.Random(seed), fake


def make_canaries(rng: random.Random, fake, n: int, repetitions: Iterable[int], n_heldout: int,
                  n_audit: int = 0, audit_seed: int = 0) -> list[Canary]:
    """``n`` trained canaries cycling through ``repetitions``, held-out ones, and audit canaries.

    Audit canaries (Steinke, Nasr & Jagielski 2023) appear once each and are
    included in training independently with probability 1/2, drawn from their
    own RNG (``audit_seed``) so that the draw depends on nothing else; they are
    short (:data:`AUDIT_FORMAT`, a name and the secret) and scored on their
    secret's tokens alone. Their secrets are longer (:data:`AUDIT_SECRET_DIGITS`),
    so the score sums the log-probability over more tokens (what this adds was not
    measured apart from the score's other choices). The digits beyond :data:`SECRET_DIGITS` come
    from the audit's own RNG, so that every other draw of the corpus is the same
    whatever the audit's secret length.
    """
    reps = [int(r) for r in repetitions]
    canaries = []
    names: set[str] = set()
    coin = random.Random(f"audit-inclusion-{audit_seed}")
    extra = random.Random(f"audit-secret-{audit_seed}")
    for i in range(n + n_heldout + n_audit):
        name = fake.first_name() + " " + fake.last_name()
        while name in names:
            name = fake.first_name() + " " + fake.last_name()
        names.add(name)
        secret = "".join(rng.choice("0123456789") for _ in range(SECRET_DIGITS))
        if i < n + n_heldout:
            prefix = CANARY_FORMAT.split("{secret}")[0].format(name=name)
            canaries.append(Canary(f"C{i:03d}", prefix, secret, reps[i % len(reps)] if i < n else 0))
        else:
            prefix = AUDIT_FORMAT.split("{secret}")[0].format(name=name)
            secret += "".join(extra.choice("0123456789") for _ in range(AUDIT_SECRET_DIGITS - SECRET_DIGITS))
            canaries.append(Canary(f"A{i - n - n_heldout:03d}", prefix, secret, int(coin.random() < 0.5), "audit"))
    return canaries


def insert_canaries(train: list[Record], canaries: list[Canary], rng: random.Random) -> list[Record]:
    """Add each trained canary ``repetitions`` times as its own record, shuffled in."""
    out = list(train)
    for canary in canaries:
        for j in range(canary.repetitions):
            out.append(Record(f"{canary.id}-{j}", canary.text, "canary", None, [], canary.id))
    rng.shuffle(out)
    return out


def _split_ids(ids: list[str], heldout: float, calibration: float, rng: random.Random) -> dict[str, str]:
    order = list(ids)
    rng.shuffle(order)
    n_held = max(1, round(heldout * len(order)))
    n_cal = max(1, round(calibration * len(order)))
    if n_held + n_cal >= len(order):
        raise DataError(f"{len(order)} records are too few to split into train, heldout and calibration")
    split = {}
    for i, key in enumerate(order):
        split[key] = "heldout" if i < n_held else "calibration" if i < n_held + n_cal else "train"
    return split


# --------------------------------------------------------------------------
# a user's data

def load_records(path: str | Path, text_field: str = "text") -> list[Record]:
    """A user's JSONL, CSV or plain-text file as records, every text exactly as written
    (:mod:`prunepriv.loaders`)."""
    return [Record(f"R{i:06d}", t) for i, t in enumerate(read_texts(path, text_field))]


def user_corpus(records: list[Record], seed: int = 0, config: DataConfig | None = None, **settings) -> Corpus:
    """Split a user's records deterministically and insert canaries for the audit
    (split fractions and canaries from ``config``, fields overridable by keyword)."""
    d = replace(config or DataConfig(), **settings)
    rng, fake = seeded_generators(seed)
    split_of = _split_ids([r.id for r in records], d.heldout_fraction, d.calibration_fraction, rng)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for record in records:
        splits[split_of[record.id]].append(record)
    canaries = make_canaries(rng, fake, d.n_canaries, d.canary_repetitions, d.n_heldout_canaries,
                             d.n_audit_canaries, seed)
    splits["train"] = insert_canaries(splits["train"], canaries, rng)
    return Corpus(splits, canaries, source="user")


def corpus_for(profile) -> Corpus:
    """The corpus a profile describes (synthetic, or the user's file)."""
    d = profile.data
    if d.source == "synthetic":
        return synthetic_corpus(profile.seed, d)
    corpus = user_corpus(load_records(d.source, d.text_field), profile.seed, d)
    corpus.source = str(d.source)
    return corpus


def general_paragraphs(seed: int = 0, min_chars: int = 200) -> list[str]:
    """Human-written English prose, shuffled by ``seed`` (the same seed, the same order).

    Source: the prose paragraphs of the Python Language Reference and Library
    topics shipped with every CPython (``pydoc_data.topics``, PSF License),
    with grammar rules, code blocks and headings removed.
    """
    from pydoc_data.topics import topics

    paragraphs: dict[str, None] = {}          # ordered and de-duplicated
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.splitlines()
            if not lines or any(line.startswith((" ", "\t")) for line in lines):
                continue                     # code, grammar and indented examples
            if len(lines) >= 2 and set(lines[-1].strip()) <= set("*=-~^"):
                continue                     # headings
            text = " ".join(line.strip() for line in lines).replace("**", "")
            if len(text) >= min_chars and text.count('"') < 8 and text[-1] in ".:":
                paragraphs[text] = None
    shuffled = list(paragraphs)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def general_english(n_passages: int = 64, seed: int = 0, min_chars: int = 200) -> list[str]:
    """The first ``n_passages`` of :func:`general_paragraphs`: public text for a general-domain perplexity."""
    paragraphs = general_paragraphs(seed, min_chars)
    if n_passages > len(paragraphs):
        raise DataError(f"asked for {n_passages} general English passages; {len(paragraphs)} are available")
    return paragraphs[:n_passages]


def public_calibration(n_passages: int, seed: int, reserve: int = PUBLIC_EVAL_PASSAGES) -> list[str]:
    """The last ``n_passages`` of :func:`general_paragraphs`: public calibration text, disjoint from the
    first ``reserve`` passages that :func:`general_english` gives for evaluation with the same seed."""
    paragraphs = general_paragraphs(seed)
    if n_passages + reserve > len(paragraphs):
        raise DataError(f"public calibration needs {n_passages} general English passages beside the {reserve} kept "
                        f"for evaluation; {len(paragraphs)} are available (lower similarity.n_samples)")
    return paragraphs[len(paragraphs) - n_passages:]
