"""training.png: a panel only for what a run has, and curves that stay apart when they lie on
each other."""

from types import SimpleNamespace

from csgn_plugin.engine.plots import plot_history, training_figure

SAME = [(1, 0.9), (2, 0.95)]


def results():
    cmc = [0.9, 0.95, 1.0]
    return {"synthcc": {m: SimpleNamespace(cmc=cmc, mAP=0.8) for m in ("general", "sc")}}


def history(stage1=False):
    h = {
        "Train/loss_x": [(10, 2.0), (20, 1.5)],
        "Train/lr": [(10, 1e-3), (20, 1e-3)],
        "Test/synthcc/general/rank1": SAME,
        "Test/synthcc/sc/rank1": SAME,  # identical to general's
    }
    if stage1:
        h["stage1/loss"] = [(1, 3.0), (2, 2.0)]
    return h


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_a_torchreid_model_gets_no_stage_1_panel():
    fig = training_figure(history(), results())
    assert titles(fig) == ["Training losses", "Test metrics", "CMC (last evaluation)"]
    assert titles(training_figure(history(stage1=True), results()))[0].startswith("Stage 1")
    assert titles(training_figure({}, {})) == []  # nothing to show, no empty panel


def test_identical_curves_differ_in_line_style_and_marker():
    fig = training_figure(history(), results())
    for ax in fig.axes:
        styles = [(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
        assert len(set(styles)) == len(styles), ax.get_title()
    metrics = fig.axes[1].get_lines()
    assert [list(line.get_ydata()) for line in metrics] == [[0.9, 0.95]] * 2  # on each other


def test_the_figure_is_written(tmp_path):
    path = plot_history(history(), results(), str(tmp_path))
    assert path == str(tmp_path / "training.png") and (tmp_path / "training.png").stat().st_size
