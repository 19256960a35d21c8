"""Claims, verify, and the paper's generated LaTeX, on the committed reference run of the paper profile."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from prunepriv.cli import main
from prunepriv.report import claims, latex, paper
from prunepriv.report.verify import freeze_reference, report, verify

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results/paper/reference"


# --------------------------------------------------------------------------
# LaTeX writer and parse check

def test_macro_names_are_letters_only():
    assert latex.macro_name("claim.latency.decode.k8") == "ppClaimLatencyDecodeKEight"
    assert latex.macro_name("claim.memorization.mia.pruned.eps1") == "ppClaimMemorizationMiaPrunedEpsOne"
    assert latex.macro_name("setup.audit_delta") == "ppSetupAuditDelta"


def test_escape_and_table_pass_the_check():
    text = latex.tabular(["model", r"$\varepsilon$"], [[latex.escape("pruned_50% & co #1"), "8"]], "lr",
                         "A caption with 95\\%.", "tab:x")
    assert latex.problems(text) == []
    assert r"pruned\_50\% \& co \#1" in text
    with pytest.raises(ValueError):
        latex.tabular(["a", "b"], [["1"]], "lr", "c", "tab:y")


@pytest.mark.parametrize("bad, pattern", [
    ("\\begin{tabular}{lr}\na & b & c \\\\\n\\end{tabular}", "3 cells in a 2-column"),
    ("\\begin{table}\n\\end{tabular}", "does not close"),
    ("{unclosed", "unclosed '{'"),
    ("closed}", "unbalanced"),
    ("snake_case before a comment % 50%", "outside math mode"),
    ("\\begin{table}", "unclosed environment"),
    ("$x", "unclosed '\\$'"),
    ("a # b", "unescaped '#'"),
    ("\\ensuremath{x} y^2", "outside math mode"),
])
def test_parse_check_finds_what_would_not_compile(bad, pattern):
    assert any(re.search(pattern, p) for p in latex.problems(bad)), latex.problems(bad)


def test_parse_check_accepts_comments_macros_and_math():
    ok = "% 50% _ # in a comment\n\\newcommand{\\x}[1]{#1}\n$a_b^c$ \\_ \\% \\& text~more \\ensuremath{10^{-6}}\n"
    ok += "\\includegraphics[width=0.5\\linewidth]{a_b.pdf}\\label{fig:a_b}\\input{generated/x_y.tex}\n"
    assert latex.problems(ok) == []


# --------------------------------------------------------------------------
# claims and verify on the committed reference

needs_reference = pytest.mark.skipif(not (REFERENCE / "manifest.json").is_file(),
                                     reason="no committed reference run of the paper profile")


@needs_reference
def test_reference_claims_cover_what_the_issues_ask():
    found = {c.id: c for c in claims.claims_from(REFERENCE)}
    prefixes = ("latency.decode.", "pruning.perplexity.pruned", "pruning.layers", "finetune.perplexity.",
                "finetune.recovered.pruned.eps8", "finetune.matched.pruned", "privacy.epsilon.",
                "memorization.exposure.pruned.epsinf", "memorization.exposure.reduction.pruned.eps8",
                "memorization.mia.untuned.", "audit.bound.pruned.epsinf", "audit.attainable", "audit.below_accountant",
                "federated.layers", "selection.endtoend.", "compression.perplexity.wanda", "compression.decode.layers")
    for prefix in prefixes:
        assert any(i.startswith(prefix) for i in found), prefix
    # three seeds where the paper compares: their claims carry a band measured across seeds
    for ident in ("finetune.perplexity.pruned.eps8", "finetune.perplexity.pruned.epsinf", "finetune.matched.pruned",
                  "memorization.exposure.pruned.eps8", "finetune.recovered.pruned.eps8"):
        assert found[ident].spread.kind == "seeds" and "3 seeds" in found[ident].spread.source, ident
    assert found["pruning.layers"].spread.kind == "exact" and found["audit.below_accountant"].holds


def _rerun(tmp_path) -> Path:
    """A copy of the committed reference's tables as a "rerun" (its manifest marked as another run)."""
    results = tmp_path / "results/paper"
    shutil.copytree(REFERENCE, results)
    manifest = (results / "manifest.json").read_text()
    (results / "manifest.json").write_text(manifest.replace('"created": "', '"created": "rerun '))
    return results


def _edit(results: Path, name: str, change) -> None:
    if name.endswith(".json"):
        data = json.loads((results / name).read_text())
        change(data)
        (results / name).write_text(json.dumps(data))
        return
    table = pd.read_csv(results / name)
    change(table)
    table.to_csv(results / name, index=False)


@needs_reference
def test_verify_positive_control_a_rerun_within_the_measured_spread_passes(tmp_path):
    """Positive control: every trained number moved by half its seeds' standard deviation (a rerun's training
    noise), every forward-pass number by 10⁻⁴ (another CPU's rounding), the layers, ε and counts unchanged:
    verify passes. The real positive control — a second run of the profile — is in REPRODUCE.md."""
    same = verify(REFERENCE, REFERENCE)
    assert same.same_run and not same.passed                   # the reference itself is no reproduction
    results = _rerun(tmp_path)

    def shift(table, columns, by_seed_sd=True):
        for column in columns:
            keys = ["model", "target_epsilon"]
            sd = table.groupby(keys)[column].transform(lambda x: x.std(ddof=1) if len(x) > 1 else 0.0)
            table[column] = table[column] + 0.5 * sd.fillna(0.0)

    _edit(results, "finetune.csv", lambda t: shift(t, ["perplexity_private"]))
    _edit(results, "pruning.csv", lambda t: t.__setitem__("perplexity_private", t["perplexity_private"] * (1 + 1e-4)))
    result = verify(results, REFERENCE)
    assert not result.same_run and result.passed, report(result)
    verdicts = result.table["verdict"].value_counts()
    assert verdicts.get("reproduced", 0) > verdicts.get("untestable", 0)


@needs_reference
@pytest.mark.parametrize("case", ["dp learned nothing", "non-private diverged", "other layers", "claim missing"])
def test_verify_negative_controls_fail(tmp_path, case):
    results = _rerun(tmp_path)
    dp8 = lambda t: (t["model"] == "pruned") & (t["target_epsilon"] == 8)           # noqa: E731
    if case == "dp learned nothing":                       # the DP runs' results replaced by the untuned model's
        _edit(results, "finetune.csv", lambda t: t.__setitem__(
            "perplexity_private", t["perplexity_private"].where(~dp8(t), t["perplexity_private_before"])))
        bad = "finetune.perplexity.pruned.eps8"
    elif case == "non-private diverged":
        nonprivate = lambda t: (t["model"] == "pruned") & t["target_epsilon"].map(math.isinf)  # noqa: E731
        _edit(results, "finetune.csv", lambda t: (
            t.__setitem__("perplexity_private", t["perplexity_private"].where(~nonprivate(t), 5000.0)),
            t.__setitem__("loss_spike", t["loss_spike"].where(~nonprivate(t), 3.0))))
        bad = "finetune.perplexity.pruned.epsinf"
    elif case == "other layers":
        _edit(results, "pruned_layers.json", lambda d: d.__setitem__("layers", sorted(d["layers"])[1:] + [29]))
        bad = "pruning.layers"
    else:
        _edit(results, "memorization.csv", lambda t: t.drop(t.index[dp8(t)], inplace=True))
        bad = "memorization.mia.pruned.eps8"
    result = verify(results, REFERENCE)
    verdicts = result.table.set_index("claim")["verdict"]
    assert not result.passed and verdicts[bad] in ("differs", "fails", "missing"), (bad, verdicts[bad])


@needs_reference
def test_verify_fails_when_a_stage_left_the_references_own_tables(tmp_path):
    """A rerun that stopped part-way keeps the committed tables of the stages it never reached: they agree
    with the reference claim by claim, so verify names them and fails."""
    results = _rerun(tmp_path)
    manifest = json.loads((results / "manifest.json").read_text())
    for entry in manifest["artifacts"].values():
        if entry.get("notebook", "") >= "05":              # stages 05 on did not run again
            entry["provenance"]["created"] = entry["provenance"]["created"].removeprefix("rerun ")
    (results / "manifest.json").write_text(json.dumps(manifest))
    result = verify(results, REFERENCE)
    assert not result.same_run and not result.passed and "tab:memorization" in result.stale
    assert "tab:finetuning" not in result.stale and "not made by this run" in report(result)


@needs_reference
def test_verify_cli_exit_status_and_missing_reference(tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(REFERENCE, root / "results/paper")
    assert main(["verify", "--profile", "paper", "--output-root", str(root)]) == 2      # no results/paper/reference
    assert "--update-reference" in capsys.readouterr().err
    assert main(["verify", "--profile", "paper", "--output-root", str(root), "--update-reference"]) == 0
    assert (root / "results/paper/reference/claims.csv").is_file()
    assert main(["verify", "--profile", "paper", "--output-root", str(root)]) == 1      # same run: not a reproduction
    out = capsys.readouterr().out
    assert "claims reproduced" in out and "verify FAILED" in out and (root / "results/paper/verify.csv").is_file()
    assert "torch " in out and "CPU flags" in out and "threads" in out


def test_freeze_refuses_incomplete_results(tmp_path):
    with pytest.raises(Exception, match="not found"):
        freeze_reference(tmp_path)


# --------------------------------------------------------------------------
# the paper

@needs_reference
def test_generated_tables_and_numbers_parse():
    for text in paper.tables(claims.load_tables(REFERENCE)).values():
        assert latex.problems(text) == []
    assert latex.problems(latex.macros(paper.numbers(claims.load_tables(REFERENCE)), "test")) == []


def test_main_tex_uses_only_generated_numbers_and_existing_figures():
    tex = (ROOT / "paper/main.tex").read_text()
    assert latex.problems(tex) == []
    generated = ROOT / "paper/generated"
    defined = set(re.findall(r"\\newcommand\{\\(pp[A-Za-z]+)\}", (generated / "numbers.tex").read_text()))
    used = set(re.findall(r"\\(pp[A-Za-z]+)", tex))
    assert used and used <= defined, sorted(used - defined)
    for name in re.findall(r"\\input\{(generated/[^}]+)\}", tex):
        assert latex.problems((ROOT / "paper" / name).read_text()) == [], name
    for name in re.findall(r"\\includegraphics(?:\[[^\]]*\])?\{([^}]+)\}", tex):
        assert (ROOT / "figures/paper" / name).is_file(), name
    body = re.sub(r"\[[^\]]*\]", "", re.sub(r"%.*", "", tex.split("\\begin{thebibliography}")[0]))
    assert not re.findall(r"\d+\.\d+", body), "a measured number typed by hand in main.tex"


TEXT_WIDTH_PT = 595.28 - 2 * 70.87      # A4 with the paper's 2.5 cm margins


def _built_paper(tmp_path) -> Path:
    """`make paper`'s PDF, built in a copy of paper/ (TeX is installed by `make tex`; missing, this fails)."""
    import subprocess

    assert shutil.which("latexmk") and shutil.which("pdffonts"), "TeX and poppler-utils missing: run `make tex`"
    build = tmp_path / "paper"
    shutil.copytree(ROOT / "paper", build, ignore=shutil.ignore_patterns("main.pdf", "*.aux", "*.log"))
    (tmp_path / "figures").symlink_to(ROOT / "figures")
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=build,
                   check=True, capture_output=True, timeout=600)
    return build / "main.pdf"


def test_built_paper_prints(tmp_path):
    """The PDF embeds no Type 3 font, names its title and authors, is A4 (the size the figures are drawn for),
    and its text never says a table was not measured."""
    import subprocess

    pdf = _built_paper(tmp_path)
    fonts = subprocess.run(["pdffonts", str(pdf)], check=True, capture_output=True, text=True).stdout
    assert "Type 3" not in fonts, fonts
    info = dict(line.split(":", 1) for line in subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True,
                                                              text=True).stdout.splitlines() if ":" in line)
    assert info["Title"].strip() and info["Author"].strip(), info
    width, height = (float(x) for x in re.findall(r"[\d.]+", info["Page size"])[:2])
    assert abs(width - 595.28) < 1 and abs(height - 841.89) < 1, info["Page size"]
    text = subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    assert "not measured" not in text.lower() and "??" not in text      # no empty table, no broken reference


def test_figures_print_at_their_drawn_size_with_readable_text():
    """Every figure of the paper fits the width main.tex gives it, so it prints unscaled, and is drawn with
    text of at least 6 pt (the rc of prunepriv.stages.plots; no smaller size is asked for anywhere)."""
    import subprocess

    from prunepriv.stages import plots

    tex = (ROOT / "paper/main.tex").read_text()
    for fraction, name in re.findall(r"\\includegraphics\[max width=([\d.]*)\\linewidth\]\{([^}]+)\}", tex):
        info = subprocess.run(["pdfinfo", str(ROOT / "figures/paper" / name)], check=True, capture_output=True,
                              text=True).stdout
        width = float(re.search(r"Page size:\s+([\d.]+)", info).group(1))
        assert width <= float(fraction or 1) * TEXT_WIDTH_PT + 1, (name, width)
    sizes = [v for k, v in plots.PAPER_RC.items() if k.endswith("size") and "marker" not in k]
    assert min(sizes) >= 6
    source = (ROOT / "prunepriv/stages/plots.py").read_text()
    assert all(float(x) >= 6 for x in re.findall(r"fontsize=([\d.]+)", source))


@needs_reference
def test_committed_reference_is_a_run_of_the_current_profile_and_code():
    """Stale reference: its profile digest differs from the profile's, it was made from uncommitted code, or
    a claim the current code makes is absent from its claims.csv."""
    import prunepriv

    manifest = json.loads((ROOT / "results/paper/manifest.json").read_text())
    digest = prunepriv.load_profile("paper").digest()
    for ident, entry in manifest["artifacts"].items():
        assert entry["provenance"]["profile_sha256"] == digest, ident
        assert not entry["provenance"]["git_revision"].endswith("+dirty"), ident
    committed = set(pd.read_csv(ROOT / "results/paper/claims.csv")["claim"])
    current = {c.id for c in claims.claims_from(ROOT / "results/paper")}
    assert current == committed, (sorted(current - committed), sorted(committed - current))
    frozen = set(pd.read_csv(REFERENCE / "claims.csv")["claim"])
    assert frozen == committed


@needs_reference
def test_the_membership_positive_control_is_a_claim_the_paper_states_either_way():
    """Without DP the attack must see membership (interval above 0.5); at chance the claim fails and the
    paper says the attack cannot show what DP prevents."""
    tables = claims.load_tables(REFERENCE)
    found = {c.id: c for c in claims.claims(tables)}
    control = found["memorization.mia.pruned.epsinf"]
    assert control.holds is (control.interval[0] > 0.5)                      # whichever the reference shows
    assert found["memorization.mia.pruned.eps8"].holds is None                # a measurement, not a control
    sentence = paper.findings(tables, list(found.values()))["finding.mia.positive.pruned"]
    assert ("not above chance" in sentence) is not control.holds
    memo = tables["memorization.csv"].copy()
    nonprivate = (memo["model"] == "pruned") & memo["target_epsilon"].map(math.isinf)
    memo.loc[nonprivate, "mia_auc_reference"] = 0.5
    tables = {**tables, "memorization.csv": memo}
    chance = claims.claims(tables)
    assert next(c for c in chance if c.id == "memorization.mia.pruned.epsinf").holds is False
    assert "not above chance" in paper.findings(tables, chance)["finding.mia.positive.pruned"]


def test_audit_reasons_need_the_reason_column():
    """An audit.csv without `reason` (an older stage 05) is refused, not read as 'no reason'."""
    from prunepriv.errors import PrunePrivError
    table = pd.DataFrame({"model": ["pruned"], "target_epsilon": [8.0], "verdict": ["untestable"]})
    with pytest.raises(PrunePrivError, match="reason"):
        paper._reasons_of(table, "pruned.eps8")
    assert paper._reasons_of(table.assign(reason=["ceiling"]), "pruned.eps8") == {"ceiling"}
