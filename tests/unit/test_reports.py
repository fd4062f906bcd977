"""What `xt view metrics` prints: each run's values in its own column, aligned by step."""
from xt_submit.cli import reports


def cells(lines, header_line=0):
    """{(row's step, column header): the cell under that header} for a right-aligned table."""
    headers = lines[header_line].split()
    ends = {h: lines[header_line].index(h) + len(h) for h in headers}
    table = {}
    for line in lines[header_line + 2:]:
        step = line.split()[0]
        for header, end in ends.items():
            start = max(0, end - 8)
            text = line[start:end].strip().split(" ")[-1] if len(line) >= end else ""
            if text and header != "step":
                table[(step, header)] = text
    return table


def test_a_metrics_table_of_runs_with_dotted_names_shows_every_value_under_its_run():
    history = {"run3.1": [{"step": 1, "name": "loss", "value": 0.9}, {"step": 2, "name": "loss", "value": 0.5}],
               "run3.5": [{"step": 1, "name": "loss", "value": 0.8}, {"step": 3, "name": "acc", "value": 0.75}]}
    lines = reports.metrics_table(history).splitlines()
    assert lines[0].split() == ["step", "run3.1:loss", "run3.5:loss", "run3.5:acc"]
    assert cells(lines) == {("1", "run3.1:loss"): "0.9000", ("1", "run3.5:loss"): "0.8000",
                            ("2", "run3.1:loss"): "0.5000", ("3", "run3.5:acc"): "0.7500"}
