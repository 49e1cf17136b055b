"""The layers of the house: models import nothing of the converters, the trainer, torch or the tests; converters
import models, never the trainer; no import cycles; each optional part without its extra fails in one line."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vit_flax.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

# the trainer's layer: it joins models and converters
TRAINER = {'vit_flax.train', 'vit_flax.probe', 'vit_flax.demo', 'vit_flax.__main__'}
TRAINER_PACKAGES = ('vit_flax.training', 'vit_flax.data', 'vit_flax.configs')
# what a model may not import anywhere: the other layers, torch and the test side
NOT_FOR_MODELS = ('vit_flax.converters', 'torch', 'vit_pytorch', 'unittest', 'parity', 'tests', *TRAINER_PACKAGES,
                  *TRAINER)
# what a model may import only inside the function that needs it, after `extras.require` (na_vit.packed_dataset
# builds a grain pipeline)
TRAINER_EXTRA = EXTRAS['train']


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix('')
    parts = list(relative.parts)
    if parts[0] == 'converters':  # installed as vit_flax.converters (pyproject's package-dir)
        parts = ['vit_flax', *parts]
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def project_modules() -> dict[str, Path]:
    paths = [*ROOT.glob('vit_flax/**/*.py'), *ROOT.glob('converters/*.py')]
    return {module_name(path): path for path in paths}


MODULES = project_modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == '__init__.py'


def is_type_checking_block(node) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ('TYPE_CHECKING', 'typing.TYPE_CHECKING')


def module_level_nodes(tree):
    """The statements that run at import: the module's own, and those in its top-level try / if blocks (but not
    `if TYPE_CHECKING:`)."""
    for node in tree.body:
        yield node
        if isinstance(node, (ast.Try, ast.If)) and not is_type_checking_block(node):
            yield from module_level_nodes(ast.Module(body=[*node.body, *getattr(node, 'orelse', [])]))


def imports(name: str, module_level_only: bool = False) -> set[str]:
    """Every module `name` imports (or only those its import runs), with relative imports resolved."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if is_package(name) else name.rpartition('.')[0]
    found = set()
    for node in (module_level_nodes(tree) if module_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from vit_flax import converters` imports the submodule vit_flax.converters
            found.update(f'{base}.{alias.name}' for alias in node.names if f'{base}.{alias.name}' in MODULES)
    return found


def project_imports(name: str) -> set[str]:
    """The project modules `name` imports (importing a.b.c runs a and a.b too)."""
    out = set()
    for imported in imports(name):
        parts = imported.split('.')
        out.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1) if '.'.join(parts[:i]) in MODULES)
    return out - {name}


# vit_flax.pretrained is the pretrained checkpoints' API: it reads and writes files, so it is a converter
CONVERTER_MODULES = {'vit_flax.pretrained'}


def layer(name: str) -> str:
    if name == 'vit_flax.converters' or name.startswith('vit_flax.converters.') or name in CONVERTER_MODULES:
        return 'converters'
    if name in TRAINER or name.startswith(TRAINER_PACKAGES):
        return 'trainer'
    return 'models'


def test_the_walk_sees_the_house():
    assert {'vit_flax.vit', 'vit_flax.registry', 'vit_flax.converters.tree', 'vit_flax.train',
            'vit_flax.training.objectives'} <= MODULES.keys()
    assert 'vit_flax.converters.tree' in project_imports('vit_flax.converters')
    assert 'vit_flax.registry' in project_imports('vit_flax.converters.tree')


def within(imported: str, names) -> bool:
    return any(imported == name or imported.startswith(name + '.') for name in names)


@pytest.mark.parametrize('name', sorted(name for name in MODULES if layer(name) == 'models'))
def test_models_import_no_other_layer_nor_torch(name):
    forbidden = sorted(imported for imported in imports(name) if within(imported, NOT_FOR_MODELS))
    assert not forbidden, f'{name} imports {forbidden}'
    at_import = sorted(imported for imported in imports(name, module_level_only=True) if within(imported, TRAINER_EXTRA))
    assert not at_import, f'{name} imports the [train] extra\'s {at_import} at module level'


@pytest.mark.parametrize('name', sorted(name for name in MODULES if layer(name) == 'converters'))
def test_converters_import_models_never_the_trainer(name):
    trainer = sorted(imported for imported in project_imports(name) if layer(imported) == 'trainer')
    assert not trainer, f'{name} imports {trainer}'


def test_no_import_cycles():
    graph = {name: project_imports(name) for name in MODULES}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for name, edges in graph.items():
        graph[name] = {e for e in edges if not (is_package(name) and e.startswith(name + '.'))}
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = 'open'
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, '\n'.join(' -> '.join(cycle) for cycle in cycles)


# the installed library, as a user without the extras has it

BLOCKER = '''
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
sys.meta_path.insert(0, Blocker())
'''


def run_python(code: str, blocked=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', BLOCKER.format(blocked=set(blocked)) + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


OPTIONAL = (*EXTRAS['torch'], *EXTRAS['train'])


# flax.nnx imports optax, which flax installs with itself: vit_flax.nnx needs it, and no other model does
FLAX_DEPENDENCIES = ('optax', 'orbax')


@pytest.mark.parametrize('models, blocked', [
    (sorted(name for name in MODULES if layer(name) == 'models' and name not in ('vit_flax.__main__', 'vit_flax.nnx')),
     OPTIONAL),
    (['vit_flax.nnx'], tuple(name for name in OPTIONAL if name not in FLAX_DEPENDENCIES)),
], ids=['models', 'nnx'])
def test_every_model_imports_without_the_extras(models, blocked):
    result = run_python(f'''
import importlib, json, sys
for name in {models!r}:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(blocked)!r})))
''', blocked=blocked)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_the_top_level_names_load_nothing_optional():
    """`from vit_flax import ViT, SimpleViT, MAE, Dino` with everything installed loads no torch, optax, orbax or
    grain, and no module jax and flax do not load themselves (jax's etils.epath imports unittest)."""
    baseline = run_python('import json, sys, jax, flax.linen, einops, numpy; print(json.dumps(sorted(sys.modules)))')
    ours = run_python('import json, sys; from vit_flax import ViT, SimpleViT, MAE, Dino; '
                      'print(json.dumps(sorted(sys.modules)))')
    assert baseline.returncode == ours.returncode == 0, ours.stderr[-3000:]
    extra = set(json.loads(ours.stdout.splitlines()[-1])) - set(json.loads(baseline.stdout.splitlines()[-1]))
    extra_top_level = {name.split('.')[0] for name in extra}
    assert extra_top_level <= {'vit_flax'}, sorted(extra_top_level)


@pytest.mark.parametrize('module, extra', [('vit_flax.converters', 'torch'), ('vit_flax.pretrained', 'torch'),
                                           ('vit_flax.train', 'train'),
                                           ('vit_flax.training.objectives', 'train'), ('vit_flax.data', 'train')])
def test_an_optional_part_without_its_extra_names_the_extra(module, extra):
    result = run_python(f'import {module}', blocked=EXTRAS[extra])
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: ') and f"pip install 'vit-flax[{extra}]'" in last, result.stderr[-2000:]


def test_converters_is_not_a_top_level_package():
    """The folder converters/ installs as vit_flax.converters only (a top-level `converters` would collide with
    other projects')."""
    result = subprocess.run([sys.executable, '-c', 'import converters'], cwd=ROOT / 'tests',
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and 'No module named' in result.stderr
