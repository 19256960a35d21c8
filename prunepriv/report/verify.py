"""``prunepriv verify``: a fresh run's claims next to the committed reference run's, with verdicts.

The reference is a frozen copy of the reference run's tables and manifest in
``results/NAME/reference/`` (written by ``prunepriv verify --update-reference``),
so a rerun that overwrites ``results/NAME/`` can still be compared with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prunepriv.errors import PrunePrivError, ResultsError
from prunepriv.report.claims import claims_from, claims_table, compare, format_value, table_files
from prunepriv.results import atomic_write_bytes, atomic_write_text, load_manifest

REFERENCE_DIR = "reference"


@dataclass
class Verification:
    table: pd.DataFrame
    reference: dict        # provenance of the reference run
    reproduced: dict       # provenance of the run checked
    same_run: bool         # the results are the reference's own files (nothing was rerun)
    stale: list[str] = field(default_factory=list)   # artifacts left from the reference (not made by this run)

    @property
    def passed(self) -> bool:
        """No claim differs, fails, is missing or extra (``untestable`` ones are reported, not counted), and
        every table was made by this run: none is the reference's own file, which would agree with itself
        (a rerun that stopped part-way leaves the committed tables of the stages it never reached)."""
        bad = self.table["verdict"].isin(["differs", "fails", "missing", "extra"])
        return not self.same_run and not self.stale and not bool(bad.any())


def reference_dir(results_dir: Path) -> Path:
    return Path(results_dir) / REFERENCE_DIR


def freeze_reference(results_dir: str | Path) -> Path:
    """Copy the claim tables, ``claims.csv`` (each claim's band and its source) and the manifest of
    ``results_dir`` into its reference folder; files of an earlier reference that this one lacks go."""
    results_dir = Path(results_dir)
    found = claims_from(results_dir)                          # refuses incomplete results
    target = reference_dir(results_dir)
    keep = table_files(results_dir) + ("manifest.json", "claims.csv")
    for name in table_files(results_dir) + ("manifest.json",):
        atomic_write_bytes(target / name, (results_dir / name).read_bytes())
    atomic_write_text(target / "claims.csv", claims_table(found).to_csv(index=False))
    for stale in target.iterdir() if target.is_dir() else []:
        if stale.is_file() and stale.name not in keep:
            stale.unlink()
    return target


def _provenance(results_dir: Path) -> dict:
    """The provenance recorded with the fine-tuning table (the stage that decides the models)."""
    artifacts = load_manifest(results_dir / "manifest.json")["artifacts"]
    entry = artifacts.get("tab:finetuning") or next(iter(artifacts.values()), {})
    return entry.get("provenance", {})


def verify(results_dir: str | Path, reference: str | Path | None = None) -> Verification:
    """Compare ``results_dir``'s claims with the reference run's."""
    results_dir = Path(results_dir)
    ref_dir = Path(reference) if reference else reference_dir(results_dir)
    if not (ref_dir / "manifest.json").is_file():
        raise PrunePrivError(f"no reference run in {ref_dir}: pass --reference DIR (the committed one is "
                             "results/paper/reference/), or freeze the current results as one with --update-reference")
    table = compare(checked_claims(ref_dir, "reference"), checked_claims(results_dir, "results"))
    ref_prov, rep_prov = _provenance(ref_dir), _provenance(results_dir)
    names = table_files(ref_dir)
    same = names == table_files(results_dir) and \
        all((ref_dir / n).read_bytes() == (results_dir / n).read_bytes() for n in names) and \
        ref_prov.get("created") == rep_prov.get("created")
    return Verification(table, ref_prov, rep_prov, same, [] if same else not_rerun(ref_dir, results_dir))


def not_rerun(ref_dir: Path, results_dir: Path) -> list[str]:
    """The artifacts of ``results_dir`` whose recorded creation time is the reference's: its own files,
    left in place because the stage that writes them did not run (or failed) this time."""
    ref = load_manifest(Path(ref_dir) / "manifest.json")["artifacts"]
    mine = load_manifest(Path(results_dir) / "manifest.json")["artifacts"]
    created = lambda entry: (entry.get("provenance") or {}).get("created")      # noqa: E731
    return sorted(k for k in ref.keys() & mine.keys() if created(ref[k]) and created(ref[k]) == created(mine[k]))


def checked_claims(results_dir: Path, what: str) -> list:
    """The claims of one results folder; a damaged manifest or table is a one-line ResultsError."""
    load_manifest(results_dir / "manifest.json")
    try:
        return claims_from(results_dir)
    except (ValueError, KeyError, IndexError, TypeError) as exc:     # pandas' parser errors are ValueErrors
        if isinstance(exc, PrunePrivError):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"the {what} tables in {results_dir} are damaged ({type(exc).__name__}: {detail}); "
                           "restore them (git checkout) or rerun the stages that write them") from None


def describe_run(prov: dict) -> str:
    """One line of a run's provenance: when, on what (device, precision, torch build, CPU flags, threads), which code."""
    device = prov.get("cuda") or "CPU"
    torch = prov.get("torch_build") or prov.get("packages", {}).get("torch", "?")
    flags = prov.get("cpu_flags")
    return (f"{prov.get('created', '?')}, {device}, {prov.get('precision', '?')}, torch {torch}, "
            f"CPU flags {' '.join(flags) if flags else ('?' if flags is None else 'none of note')}, "
            f"{prov.get('torch_threads', '?')} threads, git {str(prov.get('git_revision', '?'))[:12]}, "
            f"profile sha256 {str(prov.get('profile_sha256', '?'))[:12]}")


def report(result: Verification) -> str:
    """The claims table as plain text, with provenance and a closing verdict line."""

    lines = [f"reference:  {describe_run(result.reference)}", f"reproduced: {describe_run(result.reproduced)}"]
    if result.reference.get("profile_sha256") != result.reproduced.get("profile_sha256"):
        lines.append("note: the two runs used different profile settings; differences are expected")
    shown = result.table.assign(reference=result.table["reference"].map(format_value),
                                reproduced=result.table["reproduced"].map(format_value))
    if result.reference.get("precision") != result.reproduced.get("precision"):
        lines.append(f"note: {result.reference.get('precision')} reference, {result.reproduced.get('precision')} "
                     "rerun: each claim's band covers the spread the reference measured, whatever the arithmetic")
    lines.append("")
    lines.append(shown[["claim", "reference", "reproduced", "band", "spread", "verdict"]].to_string(index=False))
    null = shown[shown["detectable"].fillna("") != ""] if "detectable" in shown else shown.iloc[:0]
    if len(null):
        lines.append("")
        lines.append("null results of this run (the interval contains the no-effect value):")
        lines += [f"  {row.claim}: {row.detectable}" for row in null.itertuples()]
    bad = shown[~shown["verdict"].isin(["reproduced", "untestable"])]
    for row in bad.itertuples():
        lines.append(f"  {row.verdict}: {row.claim}: {row.text}" + (f" (band {row.band}: {row.source})"
                                                                   if row.band else ""))
    counts = result.table["verdict"].value_counts()
    lines.append("")
    lines.append(f"{counts.get('reproduced', 0)} of {len(result.table)} claims reproduced"
                 + "".join(f", {n} {v}" for v, n in counts.items() if v != "reproduced")
                 + (" (untestable: the reference measured no spread for them — a single training run — or a "
                    "timing was taken under load)" if counts.get("untestable", 0) else ""))
    lines.append("verify " + ("passed" if result.passed else "FAILED"))
    if result.same_run:
        lines.append("these results are the reference run's own files: run `make reproduce` (or "
                     "`prunepriv reproduce --profile NAME`) first, then verify")
    elif result.stale:
        lines.append(f"not made by this run (the reference's own, left in place): {', '.join(result.stale)}; "
                     "rerun the stages that write them (`prunepriv reproduce --profile NAME`), then verify")
    return "\n".join(lines)


def save_report(result: Verification, results_dir: str | Path) -> Path:
    """``results/NAME/verify.csv``: the claims table of the last verification."""
    return atomic_write_text(Path(results_dir) / "verify.csv", result.table.to_csv(index=False))
