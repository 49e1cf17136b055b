"""benchmarks/compile_time.py runs: its --quick table has a row per depth with positive times."""

import re

from benchmarks import compile_time
from benchmarks.machine import cpu_model


def test_quick_run_prints_the_table(capsys):
    report = compile_time.main(['--quick'])
    assert capsys.readouterr().out == report
    assert '`python -m benchmarks.compile_time --quick`' in report
    rows = [line for line in report.splitlines() if re.match(r'\| \d+ \|', line)]
    assert [int(row.split('|')[1]) for row in rows] == [2, 4]
    for row in rows:
        totals = [float(total) for total in re.findall(r'= (\d+\.\d+)', row)]
        assert len(totals) == 2 and all(total > 0 for total in totals), row


def test_cpu_model_names_family_model_and_vector_units(tmp_path):
    """An Intel server's /proc/cpuinfo (first processor's block, then the next): name, family, model, AVX-512, AMX."""
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n'
                       'model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f amx_tile\n\n'
                       'processor\t: 1\nmodel name\t: another\n')
    assert cpu_model(str(cpuinfo)) == 'Intel(R) Xeon(R) Platinum 8480+ (family 6 model 143; AVX2, AVX-512, AMX)'
    cpuinfo.write_text('model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f\n')
    assert cpu_model(str(cpuinfo)) == 'AMD EPYC (family 25 model 17; AVX2, AVX-512)'
