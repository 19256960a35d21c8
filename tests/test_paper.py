"""Claims, verify, and the paper's generated LaTeX, on the committed reference run of the paper profile."""
from __future__ import annotations

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
def test_reference_claims_cover_what_the_issue_asks_and_hold():
    found = {c.id: c for c in claims.claims_from(REFERENCE)}
    prefixes = ("latency.decode.", "pruning.perplexity.pruned", "finetune.healing.pruned", "finetune.perplexity.",
                "privacy.epsilon.", "memorization.exposure.", "memorization.mia.", "audit.below_accountant",
                "federated.layers", "federated.wanda.agreement", "selection.agreement.", "selection.endtoend.",
                "compression.perplexity.wanda", "compression.perplexity.magnitude", "compression.decode.layers",
                "compression.audit.below_accountant")
    for prefix in prefixes:
        assert any(i.startswith(prefix) for i in found), prefix
    assert all(c.holds is not False for c in found.values()), [i for i, c in found.items() if c.holds is False]
    assert found["audit.below_accountant"].value <= 0


@needs_reference
def test_claims_carry_the_interval_their_data_give(tmp_path):
    """Issue 14: exposure differences (bootstrap over canaries), AUCs (Hanley-McNeil) and perplexities
    (bootstrap over patients, where the table saved one) carry a 95% interval around their value."""
    results = tmp_path / "results/paper"
    shutil.copytree(REFERENCE, results)
    runs = pd.read_csv(results / "finetune.csv")
    runs["perplexity_private_low"], runs["perplexity_private_high"] = runs["perplexity_private"] * 0.9, \
        runs["perplexity_private"] * 1.1
    runs.to_csv(results / "finetune.csv", index=False)
    found = claims.claims_from(results)
    for prefix in ("memorization.exposure.", "memorization.mia.", "finetune.perplexity."):
        chosen = [c for c in found if c.id.startswith(prefix)]
        assert chosen and all(c.interval is not None and c.interval[0] <= c.value <= c.interval[1] for c in chosen)
    table = claims.claims_table(found)
    assert table.set_index("claim").loc["finetune.perplexity.unpruned.epsinf", "interval"].startswith("[")
    assert (table["interval"] == "").any()                 # a claim without sampling error has none
    mia = next(c for c in found if c.id == "memorization.mia.unpruned.epsinf")
    assert mia.interval[1] - mia.interval[0] > 0.2          # 40 vs 40 records: about ±0.12


@needs_reference
def test_verify_passes_on_a_rerun_within_tolerance_and_fails_outside(tmp_path):
    results = tmp_path / "results/paper"
    shutil.copytree(REFERENCE, results)
    same = verify(results, REFERENCE)
    assert same.same_run and not same.passed                   # the reference itself is no reproduction
    assert "run `make reproduce`" in report(same)

    manifest = (results / "manifest.json").read_text()
    (results / "manifest.json").write_text(manifest.replace('"created": "', '"created": "rerun '))
    latency = pd.read_csv(results / "latency.csv")
    latency.loc[latency["removed"] > 0, "decode_ratio"] += 0.05          # timing noise within ±0.10
    latency.to_csv(results / "latency.csv", index=False)
    rerun = verify(results, REFERENCE)
    assert not rerun.same_run and rerun.passed, report(rerun)

    runs = pd.read_csv(results / "finetune.csv")
    pruned = runs["model"] == "pruned"
    runs.loc[pruned, "perplexity_private"] *= 1.2      # outside ±15%, yet still below the untuned model's:
    assert (runs.loc[pruned, "perplexity_private"] < runs.loc[pruned, "perplexity_private_before"]).all()
    runs.to_csv(results / "finetune.csv", index=False)  # the value differs, the predicate still holds
    audit = pd.read_csv(results / "audit.csv")
    audit.loc[1, "epsilon_lower_bound"] = audit.loc[1, "epsilon_rdp_at_audit_delta"] + 0.1   # bound above ε
    audit.to_csv(results / "audit.csv", index=False)
    broken = verify(results, REFERENCE)
    verdicts = broken.table.set_index("claim")["verdict"]
    assert verdicts["finetune.perplexity.pruned.eps8"] == "differs"
    assert verdicts["audit.below_accountant"] == "fails"
    assert not broken.passed


@needs_reference
def test_verify_cli_exit_status_and_missing_reference(tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(REFERENCE, root / "results/paper")
    assert main(["verify", "--profile", "paper", "--output-root", str(root)]) == 2      # no results/paper/reference
    assert "--update-reference" in capsys.readouterr().err
    assert main(["verify", "--profile", "paper", "--output-root", str(root), "--update-reference"]) == 0
    assert main(["verify", "--profile", "paper", "--output-root", str(root)]) == 1      # same run: not a reproduction
    out = capsys.readouterr().out
    assert "claims reproduced" in out and (root / "results/paper/verify.csv").is_file()


def test_freeze_refuses_incomplete_results(tmp_path):
    with pytest.raises(Exception, match="not found"):
        freeze_reference(tmp_path)


def test_tolerances():
    assert claims.Tolerance("rel", 0.1, "").accepts(100, 109) and not claims.Tolerance("rel", 0.1, "").accepts(100, 111)
    assert claims.Tolerance("abs", 0.1, "").accepts(0.8, 0.9) and not claims.Tolerance("abs", 0.1, "").accepts(0.8, 0.95)
    assert claims.Tolerance("overlap", 0.75, "").accepts("1 2 3 4", "1 2 3 9")
    assert not claims.Tolerance("overlap", 0.75, "").accepts("1 2 3 4", "1 2 8 9")
    assert claims.Tolerance("rel", 0.1, "").accepts(math.inf, math.inf)
    assert not claims.Tolerance("rel", 0.1, "").accepts(math.inf, 5.0)


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


@pytest.mark.skipif(shutil.which("latexmk") is None or shutil.which("pdffonts") is None,
                    reason="needs TeX (latexmk) and poppler-utils (pdffonts)")
def test_built_paper_has_no_type3_fonts(tmp_path):
    """`make paper`'s PDF embeds only Type 1 / TrueType fonts (`pdffonts` lists no Type 3)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    build = tmp_path / "paper"
    shutil.copytree(root / "paper", build, ignore=shutil.ignore_patterns("main.pdf", "*.aux", "*.log"))
    (tmp_path / "figures").symlink_to(root / "figures")
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=build,
                   check=True, capture_output=True, timeout=600)
    fonts = subprocess.run(["pdffonts", str(build / "main.pdf")], check=True, capture_output=True, text=True).stdout
    assert "Type 3" not in fonts, fonts
