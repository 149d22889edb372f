"""curves.png of ``npo-lab compare``: small multiples against the baseline and the paired differences, drawn from
hand-made results documents."""

import math

import numpy as np
import pytest
from helpers import fake_run

from npo_lab.experiments.report import aggregate, curves_figure, plot_curves

STEPS = (0, 10, 20, 30)
METHODS = ["grpo", "npo", "autonpo", "luffy", "exgrpo", "rlep"]


def make_doc(methods, finals, interventions=None, delta=0):
    """aggregate() over runs whose curve rises linearly to ``finals[method][seed]``; ``interventions`` per method."""
    interventions = interventions or {}
    runs = [
        fake_run(
            m,
            seed,
            [(s, f * s / STEPS[-1]) for s in STEPS],
            interventions=interventions.get(m, ()),
            delta=delta,
            final=f,
        )
        for m in methods
        for seed, f in enumerate(finals[m])
    ]
    return aggregate(runs, methods, target=0.5, target_fraction=0.9, n_boot=50)


def curve_panels(fig):
    return fig.axes[:-1] if len(fig.axes) > 1 else fig.axes


@pytest.mark.parametrize("n_methods", [1, 2, 6])
@pytest.mark.parametrize("n_seeds", [1, 4])
def test_figure_is_written_with_one_panel_per_method_and_the_paired_panel(tmp_path, n_methods, n_seeds):
    methods = METHODS[:n_methods]
    finals = {m: [0.3 + 0.1 * i + 0.02 * s for s in range(n_seeds)] for i, m in enumerate(methods)}
    doc = make_doc(methods, finals)
    path = tmp_path / "curves.png"
    fig = plot_curves(doc, path, n_boot=50)
    assert path.read_bytes()[:4] == b"\x89PNG"
    # the layout's promise: one panel per method other than the baseline, then the paired differences
    assert len(fig.axes) == (1 if n_methods == 1 else n_methods)
    for ax in curve_panels(fig):
        assert ax.get_ylim() == (0.0, 1.0)
        # a band (fill_between) only when there are seeds to bootstrap over
        assert bool(ax.collections) == (n_seeds > 1)
    if n_methods == 1:
        assert "grpo" in fig.axes[0].get_title()
        return
    for ax, m in zip(fig.axes, methods[1:]):
        title = ax.get_title()
        assert m in title and "final − grpo" in title
        assert f"{doc['methods'][m]['paired_final_delta']['median']:+.3f}" in title
        assert ("no CI" in title) == (n_seeds == 1)
    assert "Paired by seed" in fig.axes[-1].get_title()
    assert [t.get_text().split("\n")[0] for t in fig.axes[-1].get_xticklabels()] == methods[1:]


def test_paired_dots_are_method_minus_baseline_of_the_same_seed():
    finals = {"grpo": [0.5, 0.6, 0.7, 0.8], "npo": [0.7, 0.6, 0.6, 0.9], "luffy": [0.4, 0.6, 0.7, 0.8]}
    doc = make_doc(list(finals), finals)
    fig = curves_figure(doc, n_boot=50)
    ax = fig.axes[-1]
    for m in ("npo", "luffy"):
        (dots,) = [line for line in ax.get_lines() if line.get_gid() == f"paired:{m}"]
        expected = np.subtract(finals[m], finals["grpo"])  # seeds 0-3, in seed order
        np.testing.assert_allclose(dots.get_ydata(), expected, atol=1e-12)
    assert "+0.050" in fig.axes[0].get_title()  # npo: median of (0.2, 0, -0.1, 0.1)


def test_compute_axis_is_drawn_dashed_with_the_extra_steps():
    finals = {"grpo": [0.5, 0.6], "npo": [0.7, 0.8]}
    doc = make_doc(["grpo", "npo"], finals, interventions={"npo": (0, 15)}, delta=5)
    ax = curves_figure(doc, n_boot=50).axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1  # npo's; grpo took no extra steps
    # before step 0 nothing was spent; at 10 one look-ahead (5), at 20 and 30 two (10)
    np.testing.assert_array_equal(dashed[0].get_xdata(), [0, 15, 30, 40])


def test_nan_final_accuracy_draws_no_dot_and_says_na(tmp_path):
    finals = {"grpo": [0.5, 0.6, 0.7], "npo": [0.7, math.nan, 0.6]}
    doc = make_doc(list(finals), finals)
    fig = plot_curves(doc, tmp_path / "curves.png", n_boot=50)
    assert "n/a" in fig.axes[0].get_title()
    (dots,) = [line for line in fig.axes[-1].get_lines() if line.get_gid() == "paired:npo"]
    np.testing.assert_allclose(dots.get_ydata(), [0.2, math.nan, -0.1], atol=1e-12)


def test_a_results_json_without_paired_statistics_gets_them_computed():
    finals = {"grpo": [0.5, 0.6, 0.7], "npo": [0.6, 0.8, 0.6]}
    doc = make_doc(list(finals), finals)
    expected = doc["methods"]["npo"]["paired_final_delta"]["median"]
    for key in ("paired_final_delta", "wins"):  # as in a results.json written before they existed
        del doc["methods"]["npo"][key]
    fig = curves_figure(doc, n_boot=50)
    assert f"{expected:+.3f}" in fig.axes[0].get_title() and "2 of 3 better" in fig.axes[0].get_title()
