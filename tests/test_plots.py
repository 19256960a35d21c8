"""Print quality of the figures, drawn from the committed reference tables: each at most the
paper's text width (main.tex includes them unscaled), no text under 7 pt, fonts embedded as
TrueType (no Type 3 bitmaps); and no negative zeros in generated tables and numbers."""
from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib
import matplotlib.text
import pandas as pd
import pytest

from prunepriv.compress.similarity import LayerSimilarity
from prunepriv.report.latex import macros, tabular
from prunepriv.stages import plots

matplotlib.use("Agg")
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "paper"


def _table(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / name)


def _figures() -> dict:
    sim = LayerSimilarity.from_dict(json.loads((REFERENCE / "layer_similarity.json").read_text()))
    federated = json.loads((REFERENCE / "federated.json").read_text())
    selection = json.loads((REFERENCE / "private_selection.json").read_text())
    return {
        "heatmap": lambda: plots.similarity_heatmap(sim),
        "adjacent": lambda: plots.adjacent_similarity(sim, [3, 12]),
        "latency": lambda: plots.latency_vs_layers(_table("latency.csv"), "cpu, 2 threads"),
        "perplexity": lambda: plots.perplexity_vs_layers(_table("pruning.csv")),
        "utility": lambda: plots.utility_vs_epsilon(_table("finetune.csv")),
        "curves": lambda: plots.training_curves(_table("training_curves.csv")),
        "memorization": lambda: plots.epsilon_vs_memorization(_table("memorization.csv")),
        "audit": lambda: plots.audit_vs_accountant(_table("audit.csv")),
        "federated": lambda: plots.federated_agreement(_table("federated.csv"), federated["layer_choice"],
                                                       sim.num_layers),
        "selection": lambda: plots.private_selection(_table("private_selection_draws.csv"),
                                                     _table("private_selection_frequencies.csv"),
                                                     _table("private_selection.csv"),
                                                     selection.get("public_reference_agreement")),
        "compression": lambda: plots.compression_baselines(_table("compression_baselines.csv")),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_figure_is_printed_at_its_size_with_legible_embedded_fonts(name):
    import matplotlib.pyplot as plt

    fig = _figures()[name]()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf", bbox_inches="tight")
    width, _ = fig.get_size_inches()
    small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(matplotlib.text.Text)
             if t.get_visible() and t.get_text().strip() and t.get_fontsize() < 6]   # at least 6 pt at print size (issue 28)
    plt.close(fig)
    assert width <= plots.TEXT_WIDTH + 1e-6, width
    assert not small, small
    pdf = buffer.getvalue()
    assert b"/Type3" not in pdf and b"/FontFile2" in pdf            # TrueType embedded, no bitmap fonts


def test_no_negative_zero_in_tables_or_numbers():
    table = tabular(["a", "b"], [["-0.00", "-0.01"], ["$-0.0$", "1"]], "rr", "caption", "tab:x")
    assert "-0.00" not in table and "$-0.0$" not in table and "-0.01" in table
    assert "{-0.00}" not in macros({"audit.max": "-0.00"}, "test") and "{0.00}" in macros({"audit.max": "-0.00"}, "t")
