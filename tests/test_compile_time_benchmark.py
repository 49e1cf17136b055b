"""benchmarks/compile_time.py runs: its --quick table has a row per depth with positive times."""

import re

from benchmarks import compile_time


def test_quick_run_prints_the_table(capsys):
    report = compile_time.main(['--quick'])
    assert capsys.readouterr().out == report
    assert '`python -m benchmarks.compile_time --quick`' in report
    rows = [line for line in report.splitlines() if re.match(r'\| \d+ \|', line)]
    assert [int(row.split('|')[1]) for row in rows] == [2, 4]
    for row in rows:
        totals = [float(total) for total in re.findall(r'= (\d+\.\d+)', row)]
        assert len(totals) == 2 and all(total > 0 for total in totals), row
