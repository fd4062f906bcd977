"""`xt plot`'s figure, checked through matplotlib's artists (the lines' data, the legend's and the
colorbar's place), not through pixels."""
import matplotlib.image
import pytest

from xt_submit.cli import plotting


def sweep(count, metrics=("loss",), steps=5):
    """`count` runs sweeping lr; metric m of run k at step s is (k + 1) * s (+ 100 for the second metric)."""
    runs = [{"name": f"run1.{k + 1}", "hparams": {"lr": 0.001 * (k + 1), "opt": "sgd"}} for k in range(count)]
    series = {metric: {run["name"]: [{"step": s, "time": 1000.0 + k + s, "value": (k + 1) * s + 100 * m}
                                     for s in range(1, steps + 1)]
                       for k, run in enumerate(runs)}
              for m, metric in enumerate(metrics)}
    return runs, series


def labelled(axes):
    return [line for line in axes.get_lines() if not line.get_label().startswith("_")]


def test_one_line_per_run_with_its_values_and_swept_hparams_in_the_label():
    runs, series = sweep(3)
    figure = plotting.metric_figure(runs, series, x="step")
    (axes,) = figure.axes
    lines = labelled(axes)
    assert [line.get_label() for line in lines] == ["run1.1 lr=0.001", "run1.2 lr=0.002", "run1.3 lr=0.003"]
    assert [list(line.get_ydata()) for line in lines] == [[1, 2, 3, 4, 5], [2, 4, 6, 8, 10], [3, 6, 9, 12, 15]]
    assert list(lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert all(tick == int(tick) for tick in axes.get_xticks())  # integer steps, integer ticks


def test_the_legend_is_outside_the_axes(tmp_path):
    runs, series = sweep(8)
    out = tmp_path / "plot.png"
    assert plotting.plot_metric(runs, series, x="step", out=str(out)) == 8
    assert matplotlib.image.imread(str(out)).shape[2] in (3, 4)
    figure = plotting.metric_figure(runs, series, x="step")
    figure.canvas.draw()
    (legend,) = figure.legends
    (axes,) = figure.axes
    assert len(legend.get_texts()) == 8
    assert legend.get_window_extent().x0 >= axes.get_window_extent().x1  # right of the plot, never over it


def test_fifty_runs_get_a_colormap_and_a_colorbar_instead_of_a_legend():
    runs, series = sweep(50)
    figure = plotting.metric_figure(runs, series, x="step")
    figure.canvas.draw()
    plot, colorbar = figure.axes
    assert figure.legends == [] and plot.get_legend() is None
    assert colorbar.get_ylabel() == "lr"  # the one swept hparam colours the lines
    lines = labelled(plot)
    assert len(lines) == 50
    assert lines[0].get_color() != lines[-1].get_color()
    assert colorbar.get_window_extent().x0 >= plot.get_window_extent().x1


def test_one_subplot_per_metric():
    runs, series = sweep(2, metrics=("loss", "acc"))
    figure = plotting.metric_figure(runs, series, x="step")
    loss, acc = figure.axes
    assert (loss.get_ylabel(), acc.get_ylabel()) == ("loss", "acc")
    assert [list(line.get_ydata()) for line in labelled(acc)] == [[101, 102, 103, 104, 105], [102, 104, 106, 108, 110]]
    assert len(figure.legends) == 1 and len(figure.legends[0].get_texts()) == 2  # the same runs: one legend


def test_smoothing_draws_the_moving_average_over_the_faint_raw_curve():
    runs = [{"name": "run1.1", "hparams": {}}]
    values = [4.0, 0.0, 8.0, 2.0, 6.0]
    series = {"loss": {"run1.1": [{"step": s, "time": s, "value": v} for s, v in enumerate(values)]}}
    figure = plotting.metric_figure(runs, series, x="step", smooth=3)
    raw, smoothed = figure.axes[0].get_lines()
    assert list(raw.get_ydata()) == values and raw.get_alpha() < 0.5
    assert list(smoothed.get_ydata()) == pytest.approx([4.0, 2.0, 4.0, 10 / 3, 16 / 3])
    assert smoothed.get_label() == "run1.1" and smoothed.get_alpha() is None
    assert plotting.moving_average([1, 2, 3, 4], 1) == [1, 2, 3, 4]


def test_time_on_x_is_seconds_since_each_runs_first_point():
    runs, series = sweep(2)
    figure = plotting.metric_figure(runs, series, x="time")
    assert [list(line.get_xdata()) for line in labelled(figure.axes[0])] == [[0.0, 1.0, 2.0, 3.0, 4.0]] * 2
    assert figure.axes[0].get_xlabel() == "seconds since the run's first point"


def test_aggregated_lines_per_hparam_value():
    runs = [{"name": f"run1.{k}", "hparams": {"bs": 16 if k < 3 else 32}} for k in range(1, 5)]
    series = {"loss": {f"run1.{k}": [{"step": 1, "time": 0, "value": float(k)}, {"step": 2, "time": 1, "value": 2.0 * k}]
                       for k in range(1, 5)}}
    figure = plotting.metric_figure(runs, series, x="step", aggregate="mean", group_by="bs")
    lines = labelled(figure.axes[0])
    assert [line.get_label() for line in lines] == ["bs=16 (mean of 2 runs)", "bs=32 (mean of 2 runs)"]
    assert [list(line.get_ydata()) for line in lines] == [[1.5, 3.0], [3.5, 7.0]]


def test_the_x_axis_is_named_by_the_scripts_step_name():
    runs, series = sweep(2)
    figure = plotting.metric_figure(runs, series, x="step", step_name="epoch")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "epoch" and axes.get_title().endswith("by epoch")
    assert plotting.metric_figure(runs, series, x="time").axes[0].get_xlabel() == "seconds since the run's first point"
