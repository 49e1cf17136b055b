"""The notebooks in notebooks/ run, and the committed copies keep their outputs (`make notebooks` refreshes them).

Each notebook is executed by `jupyter nbconvert --execute` in a subprocess, as a reader would run it, into a
temporary folder (the committed file is not touched); an executed copy must hold no error output. The committed
copies are checked without running anything: every code cell executed, no error outputs, and the notebooks that
plot carry their figures as embedded PNGs, so "outputs kept" cannot rot silently.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / 'notebooks'
NOTEBOOKS = {
    '01_quickstart.ipynb': False,  # name: whether it plots
    '02_export_to_pytorch.ipynb': True,
    '03_mae_pretraining.ipynb': True,
    '04_attention_maps.ipynb': True,
}
JUPYTER = Path(sys.executable).parent / 'jupyter'
# Each notebook runs in under 40 s on 2 idle cores; the test suite shares them with another pytest worker
TIMEOUT_S = 300


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == 'code']


def error_outputs(notebook) -> list[str]:
    return [f'cell {index}: {output.get("ename")}: {output.get("evalue")}'
            for index, cell in enumerate(notebook.cells) if cell.cell_type == 'code'
            for output in cell.get('outputs', []) if output.output_type == 'error']


def test_every_notebook_is_listed():
    assert sorted(path.name for path in NOTEBOOKS_DIR.glob('*.ipynb')) == sorted(NOTEBOOKS)


# make test runs the quickstart; the other three (about 2 minutes of the 20-minute budget) run in make test-slow.
# Their committed copies are checked in make test all the same (test_committed_notebook_keeps_its_outputs).
EXECUTED_IN_MAKE_TEST = {'01_quickstart.ipynb'}


@pytest.mark.parametrize('name', [name if name in EXECUTED_IN_MAKE_TEST else pytest.param(name, marks=pytest.mark.slow)
                                  for name in sorted(NOTEBOOKS)])
def test_notebook_executes(name, tmp_path):
    command = [str(JUPYTER), 'nbconvert', '--to', 'notebook', '--execute', f'--output-dir={tmp_path}',
               f'--ExecutePreprocessor.timeout={TIMEOUT_S}', str(NOTEBOOKS_DIR / name)]
    try:
        result = subprocess.run(command, cwd=NOTEBOOKS_DIR, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f'{name} did not finish in {TIMEOUT_S} s')
    assert result.returncode == 0, f'{name} failed:\n{result.stderr[-6000:]}'
    executed = nbformat.read(tmp_path / name, as_version=4)
    assert not error_outputs(executed)
    assert all(cell.execution_count is not None for cell in code_cells(executed))


@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_committed_notebook_keeps_its_outputs(name):
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata['kernelspec']['name'] == 'python3'
    cells = code_cells(notebook)
    unexecuted = [index for index, cell in enumerate(cells) if cell.execution_count is None]
    assert not unexecuted, f'{name}: code cells {unexecuted} carry no execution count: run `make notebooks`'
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1)), (
        f'{name} was not executed top to bottom in one run: run `make notebooks`')
    assert not error_outputs(notebook)
    assert all(cell.outputs for cell in cells if 'print(' in cell.source), f'{name}: a printing cell has no output'
    if NOTEBOOKS[name]:
        images = [output for cell in cells for output in cell.outputs if 'image/png' in output.get('data', {})]
        assert images, f'{name} should carry its plots as embedded PNGs: run `make notebooks`'
