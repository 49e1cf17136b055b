"""vit-flax (jit) against vit-pytorch (eager and `torch.compile`) on the same models, weights, images and optimiser.

    .venv/bin/python -m benchmarks.side_by_side [--models vit_s16 vit_b16 cvt13] [--batch 8] [--steps 5] \\
        [--no-compile] [--device cpu|cuda] [--dtype float32|bfloat16] [--markdown] \\
        [--write-readme benchmarks/README.md] [--scan-layers] [--remat-policy POLICY] \\
        [--attention-impl explicit|xla|cudnn|auto]

On one H200 (the issue's GPU configuration: ViT-B/16 at 224, bfloat16, cuDNN attention):

    .venv/bin/python -m benchmarks.side_by_side --device cuda --dtype bfloat16 --models vit_b16 --batch 256 \\
        --attention-impl cudnn --peak-tflops 989

What is compared, per model:
- the same vit-pytorch keywords, built on both sides through the registry entry (`vit_flax.registry.build` and the
  entry's vit-pytorch class); the torch initialisation is converted with `converters.from_torch`, so both start
  from the same weights; the same random batch (NHWC for Flax, NCHW for torch) and random labels;
- a training step: cross entropy, then AdamW (lr 1e-3, torch's defaults: betas (0.9, 0.999), eps 1e-8, weight
  decay 0.01 on every parameter). Flax: one jitted function (forward, grad, optax.adamw update) with the train state
  donated; torch: zero_grad, forward, loss, backward, step. torch.compile compiles the model, not the optimiser;
- inference: the jitted `model.apply` against the torch model in eval mode under `torch.no_grad()`.
- vit-flax's JAX-only options (`--scan-layers`, `--remat-policy`, `--attention-impl`) go to the models that take them
  (the ViTs), and the notes say which model ran with which; the weights and torch's side are unchanged.
The first training step's losses (and the first inference's) are printed: they should agree, a check that both
sides run the same model.

Processes. Each variant (flax, torch eager, torch.compile) runs in its own worker process, a re-invocation of this
module with a hidden `--worker` flag, which the parent drives over a pipe one command at a time. So peak memory is
read per variant (see `MemoryMeter`: on CPU the growth of the worker's resident set over its size after the imports,
i.e. weights, optimiser state, activations, compiler and allocator caches; on CUDA the allocator's peak), while the
timed repeats still alternate call by call (flax, torch eager, torch.compile, flax, ...): the workers are alive
together but only one computes at a time, so they never compete for the cores, and load that changes while the
benchmark runs is spread over all of them. The price is that the idle workers' memory stays resident meanwhile (one
model's variants at a time), and that alternation is per call, not per process start (one process per variant and
model, so process-level noise such as memory layout is not averaged out). Each worker runs all of inference (its
compile, warm-up and repeats), then all of training, so its inference peak is that of loading and inference and its
training peak the whole run's; every variant compiles while the others wait, so compile times are measured without
contention.

Timing: `time.perf_counter` inside the worker around one call (`jax.block_until_ready` on Flax's outputs,
`torch.cuda.synchronize` on CUDA; eager CPU torch is synchronous), after `--warmup` untimed calls; the median (and
the minimum) of `--steps` repeats counts. Ratios are torch time / flax time: above 1, vit-flax is faster.
Compile time: Flax's `jax.jit(f).lower(...)` and `.compile()` timed apart; torch.compile's is the first call minus
the median call. A torch.compile that fails is reported as `failed: <reason>`.

On CUDA the table adds images/s and MFU (or on CPU with `--peak-tflops`), model FLOPs per step / (step time x
`--peak-tflops`): for vit.ViT the analytic matmul count (`vit_forward_flops`, x3 for a training step), for other
models XLA's `cost_analysis()` of the compiled Flax step. The GPU paths (memory, synchronisation, MFU) are written
but have not been run yet.
vit-flax runs with its trainer's memory setting for CPU runs (vit_flax/training/allocator.py: freed memory stays in
the process, so a step's large buffers do not fault in fresh pages every step); `--keep-freed-memory both` gives it
torch too, `neither` runs both as glibc has it, and the notes give each call's page faults. vit-flax runs with its
trainer's XLA flags (`--xla-flags-as-set` leaves the environment's). Before each timed call the parent waits until
every worker is idle (threads of the last call may spin on; `--no-idle-wait` skips that), and it reports the CPU time
the idle workers used during the others' calls.
`--dtype bfloat16` is each framework's usual mixed precision, float32 master weights: Flax casts the parameters and
images to bfloat16 inside the step (as `vit_flax.training.steps` does), torch runs under `torch.autocast`. They
are not the same arithmetic (autocast keeps norms and softmax in float32), so their losses agree only roughly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.machine import cpu_count, cpu_model, kernel_settings, process_cpu_seconds, transparent_huge_pages

PROGRAM = 'python -m benchmarks.side_by_side'
README_MARKERS = ('<!-- side-by-side:start -->', '<!-- side-by-side:end -->')
REPLY = '@@side-by-side '  # prefixes the worker's replies: libraries may print to stdout too
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ('flax', 'torch', 'torch.compile')  # the order the repeats alternate in
PHASES = ('infer', 'train')  # inference first: its memory peak is then that of inference alone

# AdamW as torch.optim.AdamW's defaults, with lr 1e-3
LEARNING_RATE, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.01


# the models


def vit_config(image_size, patch_size, dim, depth, heads, mlp_dim, dim_head=64, num_classes=1000) -> dict:
    return dict(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth,
                heads=heads, mlp_dim=mlp_dim, dim_head=dim_head)


@dataclasses.dataclass(frozen=True)
class Model:
    title: str
    registry_name: str
    config: Callable[[int], dict]  # vit-pytorch keywords for an image size
    quick_config: dict  # --quick's tiny stand-in


# --quick: ViT-S and ViT-B both become this; CvT the registry's first (test) configuration
QUICK_VIT = vit_config(32, 8, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8, num_classes=10)
MODELS = {
    'vit_s16': Model('ViT-S/16', 'vit.ViT', lambda size: vit_config(size, 16, dim=384, depth=12, heads=6,
                                                                     mlp_dim=1536), QUICK_VIT),
    'vit_b16': Model('ViT-B/16', 'vit.ViT', lambda size: vit_config(size, 16, dim=768, depth=12, heads=12,
                                                                     mlp_dim=3072), QUICK_VIT),
    # The hierarchical model: vit-pytorch's CvT defaults are the paper's CvT-13 (about 20M parameters, 4.5 GFLOPs
    # at 224), so there is no size to invent; it takes any image size; and its op mix (strided and depth-wise
    # convolutions, BatchNorm, feature maps of three sizes) is the furthest from the plain ViTs'.
    'cvt13': Model('CvT-13', 'cvt.CvT', lambda size: dict(num_classes=1000),
                   dict(num_classes=10, s1_emb_dim=16, s1_heads=1, s2_emb_dim=24, s2_heads=2, s2_depth=1,
                        s3_emb_dim=32, s3_heads=1, s3_depth=1, s3_kv_proj_stride=1)),
}


def vit_forward_flops(config: dict, batch: int, image_size: int | None = None) -> int:
    """Matmul FLOPs (2 per multiply-add) of vit.ViT's forward pass on `batch` square images.

    Patch embedding, per layer the qkv projection, attention scores, weighted sum of values, output projection and
    the two feed-forward matmuls, and the head. Norms, softmax, GELU and residual adds are left out (a few percent
    at ViT sizes): this is the "model FLOPs" of MFU. A training step is about 3x (the backward pass is two matmuls
    per forward one).
    """
    image_size = image_size or config['image_size']
    patch, dim, heads, dim_head = config['patch_size'], config['dim'], config['heads'], config.get('dim_head', 64)
    channels, pool = config.get('channels', 3), config.get('pool', 'cls')
    patches = (image_size // patch) ** 2
    tokens = patches + (pool == 'cls')
    inner = heads * dim_head
    project_out = not (heads == 1 and dim_head == dim)
    layer = (2 * tokens * dim * 3 * inner  # to_qkv
             + 2 * 2 * tokens * tokens * inner  # q k^T and attn v
             + project_out * 2 * tokens * inner * dim  # to_out
             + 2 * 2 * tokens * dim * config['mlp_dim'])  # feed-forward
    embed = 2 * patches * patch * patch * channels * dim
    head = 2 * dim * config['num_classes'] if config['num_classes'] > 0 else 0
    return batch * (embed + config['depth'] * layer + head)


# the workers: one variant of one model each


class MemoryMeter:
    """A worker's peak memory above its footprint after the imports, since the start.

    CPU: the resident set's high-water mark (`ru_maxrss`). It cannot be reset per phase: Linux's
    `/proc/self/clear_refs` can, but writing it slowed the following torch steps by up to 100x on our machines.
    CUDA: the framework allocator's peak bytes in use, which excludes the CUDA context and the caching allocators'
    unused reserve.
    """

    def __init__(self, framework: str, device: str):
        self.framework, self.device = framework, device
        self.baseline = self._peak()

    def _peak(self) -> int:
        if self.device == 'cuda':
            if self.framework == 'flax':
                import jax

                return jax.devices()[0].memory_stats()['peak_bytes_in_use']
            import torch

            return torch.cuda.max_memory_allocated()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == 'darwin' else maxrss * 1024  # bytes on macOS, KiB elsewhere

    def peak(self) -> int:
        return self._peak() - self.baseline


class FlaxRunner:
    def __init__(self, spec: dict, data):
        import jax
        import jax.numpy as jnp
        import optax

        from vit_flax import converters
        from vit_flax import registry
        from vit_flax.training.state import TrainState
        from vit_flax.training.steps import cast_floats

        model = registry.build(spec['registry_name'], {**spec['config'], **spec['flax_options']})
        state_dict = {key.removeprefix('state/'): data[key] for key in data.files if key.startswith('state/')}
        self.variables = jax.device_put(converters.from_torch(model, state_dict))
        self.images, self.labels = jax.device_put((data['images'], data['labels']))
        compute_dtype = jnp.dtype(spec['dtype'])
        tx = optax.adamw(LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
        # the train state takes over the initial parameters, and donates them to the first step: inference, which
        # reads them, has finished by then
        self.new_state = lambda: TrainState(
            step=jnp.zeros((), jnp.int32), params=self.variables['params'],
            opt_state=tx.init(self.variables['params']), batch_stats=self.variables.get('batch_stats', {}),
            buffers=self.variables.get('buffers', {}))

        def infer(variables, images):
            return model.apply(cast_floats(variables, compute_dtype), images.astype(compute_dtype))

        def loss_fn(params, collections, images, labels):
            variables = {'params': cast_floats(params, compute_dtype), **collections}
            # BatchNorm statistics (CvT) update in training, as torch's do
            logits, new_collections = model.apply(variables, images.astype(compute_dtype), train=True,
                                                  mutable=list(collections), rngs={'dropout': jax.random.key(0)})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
            return loss, new_collections

        def train_step(state, images, labels):
            (loss, new_collections), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.collections(), images, labels)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state).with_collections(new_collections)
            return state, loss

        self.programs = {'infer': jax.jit(infer), 'train': jax.jit(train_step, donate_argnums=0)}
        self.jax, self.optax = jax, optax
        self.compiled, self.state = {}, None

    def arguments(self, phase):
        return (self.variables, self.images) if phase == 'infer' else (self.state, self.images, self.labels)

    def setup(self, phase: str, warmup: int) -> dict:
        if phase == 'train':
            self.state = self.new_state()
        start = time.perf_counter()
        lowered = self.programs[phase].lower(*self.arguments(phase))
        lowered_at = time.perf_counter()
        compiled = self.compiled[phase] = lowered.compile()
        compiled_at = time.perf_counter()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict in older jax
        first = self.run(phase)
        for _ in range(warmup):
            self.run(phase)
        if phase == 'infer':
            first = self.optax.softmax_cross_entropy_with_integer_labels(first.astype('float32'), self.labels).mean()
        memory = compiled.memory_analysis()  # None where the backend does not say
        return {'lower_s': lowered_at - start, 'compile_s': compiled_at - lowered_at,
                'xla_flops': (cost or {}).get('flops'), 'first_loss': float(first),
                'xla_temp_bytes': getattr(memory, 'temp_size_in_bytes', None), 'xla_flags': os.environ['XLA_FLAGS']}

    def run(self, phase: str):
        """One call, finished: the logits for inference, the loss for a training step."""
        if phase == 'train':
            self.state, loss = self.compiled['train'](*self.arguments('train'))
            return self.jax.block_until_ready((self.state, loss))[1]
        return self.jax.block_until_ready(self.compiled['infer'](*self.arguments('infer')))

    def step(self, phase: str) -> float:
        start = time.perf_counter()
        self.run(phase)
        return time.perf_counter() - start


class TorchRunner:
    def __init__(self, spec: dict, data, compiled: bool):
        import torch

        from vit_flax import converters, registry

        entry = registry.BY_NAME[spec['registry_name']]
        torch_class = getattr(converters.import_vit_pytorch(entry.torch_module), entry.torch_class_name)
        self.device = torch.device(spec['device'])
        if self.device.type == 'cuda':
            # JAX's float32 matmuls on GPU are TF32 by default; torch's are full float32 unless told
            torch.set_float32_matmul_precision('high')
        model = torch_class(**converters.torch_keywords(registry.tuples_from_json(spec['config'])))
        model.load_state_dict({key.removeprefix('state/'): torch.from_numpy(data[key])
                               for key in data.files if key.startswith('state/')}, strict=True)
        self.model = model.to(self.device)
        self.images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data['images'], -1, 1))).to(self.device)
        self.labels = torch.from_numpy(data['labels']).long().to(self.device)
        self.forward = torch.compile(model) if compiled else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS,
                                           weight_decay=WEIGHT_DECAY)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if spec['dtype'] == 'bfloat16' else contextlib.nullcontext
        self.torch = torch

    def run(self, phase: str):
        """One call, finished: the logits for inference, the loss for a training step."""
        if phase == 'infer':
            with self.torch.no_grad(), self.autocast():
                output = self.forward(self.images)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                logits = self.forward(self.images)
            output = self.torch.nn.functional.cross_entropy(logits.float(), self.labels)
            output.backward()
            self.optimizer.step()
        if self.device.type == 'cuda':  # eager CPU torch has finished already
            self.torch.cuda.synchronize()
        return output

    def setup(self, phase: str, warmup: int) -> dict:
        self.model.train(phase == 'train')  # torch.compile guards on the mode: each phase compiles its own graph
        start = time.perf_counter()
        first = self.run(phase)
        first_s = time.perf_counter() - start
        for _ in range(warmup):
            self.run(phase)
        if phase == 'infer':
            first = self.torch.nn.functional.cross_entropy(first.float(), self.labels)
        return {'first_call_s': first_s, 'first_loss': first.item()}

    def step(self, phase: str) -> float:
        start = time.perf_counter()
        self.run(phase)
        return time.perf_counter() - start


def worker(spec: dict):
    """Serve the parent's commands, one JSON object per line on stdin, each answered by one REPLY line."""
    if spec['threads']:
        # before the imports: XLA sizes its CPU thread pool by the cores this process may use
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec['threads']])
    keeps_freed_memory = False
    if spec['keep_freed_memory'] in ('both', spec['variant'].split('.')[0]):
        # as vit-flax's trainer runs: before JAX creates its backend, which reads the dispatch setting
        from vit_flax.training.allocator import keep_freed_memory

        keeps_freed_memory = keep_freed_memory()
    if spec['variant'] == 'flax':
        import jax

        jax.devices()  # the backend's own footprint belongs to the baseline
    else:
        import torch

        if spec['threads']:
            torch.set_num_threads(spec['threads'])
    framework = spec['variant'].split('.')[0]
    memory = MemoryMeter(framework, spec['device'])

    def reply(message: dict):
        print(REPLY + json.dumps(message), flush=True)

    data = np.load(spec['data'])
    runner = FlaxRunner(spec, data) if framework == 'flax' else TorchRunner(spec, data, spec['variant'] != 'torch')
    reply({'ready': True, 'keeps_freed_memory': keeps_freed_memory})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command['op'] == 'setup':
                reply(runner.setup(command['phase'], command['warmup']))
            elif command['op'] == 'step':
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                seconds = runner.step(command['phase'])
                reply({'seconds': seconds, 'page_faults': resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})
            elif command['op'] == 'memory':
                reply({'peak_bytes': memory.peak()})
        except Exception as error:  # a torch.compile that fails: the parent records the reason and goes on
            reason = str(error).strip().splitlines()
            reply({'error': f"{type(error).__name__}: {reason[0] if reason else ''}"[:300]})
    # the parent has all it needs: skip the interpreter's teardown of jax and torch, which takes seconds
    sys.stdout.flush()
    os._exit(0)


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, spec: dict, log_dir: str):
        env = dict(os.environ, JAX_PLATFORMS='cuda' if spec['device'] == 'cuda' else 'cpu',
                   # JAX would take 75% of the GPU at start, leaving torch's worker little and hiding JAX's peak
                   XLA_PYTHON_CLIENT_PREALLOCATE='false')
        if spec['variant'] == 'flax':
            env['XLA_FLAGS'] = spec['flax_xla_flags']
        if spec['variant'] == 'torch.compile':
            # a cold compile, as JAX's (whose persistent cache is off by default): inductor would otherwise reuse the
            # kernels an earlier run left in its cache, and its compile time would fall from ~30 s to ~5 s
            env['TORCHINDUCTOR_FORCE_DISABLE_CACHES'] = '1'

        self.log = Path(log_dir) / f"{spec['variant']}.log"
        with self.log.open('w') as stderr:
            self.process = subprocess.Popen(
                [sys.executable, '-m', 'benchmarks.side_by_side', '--worker', json.dumps(spec)], cwd=REPO, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        tail = self.log.read_text().strip().splitlines()[-1:] or ['no output']
        raise WorkerFailed(f'worker exited ({self.process.wait()}): {tail[0][:300]}')

    def ask(self, op: str, **fields) -> dict:
        try:
            self.process.stdin.write(json.dumps({'op': op, **fields}) + '\n')
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it has exited: receive() says how
        return self.receive()

    def close(self):
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()  # the worker's loop ends on end of input
        self.process.wait()


# the parent


def prepare(model: Model, config: dict, args, path: Path):
    """The shared start: vit-pytorch's initialisation (torch.manual_seed) and a random batch, saved for the workers."""
    import torch

    from vit_flax import converters, registry

    entry = registry.BY_NAME[model.registry_name]
    torch.manual_seed(args.seed)
    torch_model = getattr(converters.import_vit_pytorch(entry.torch_module), entry.torch_class_name)(
        **converters.torch_keywords(config))
    state = {f'state/{key}': converters.to_numpy(value) for key, value in torch_model.state_dict().items()}
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((args.batch, args.image_size, args.image_size, 3), dtype=np.float32)
    labels = rng.integers(0, config['num_classes'], args.batch).astype(np.int32)
    np.savez(path, images=images, labels=labels, **state)


def flax_options(registry_name: str, args) -> dict:
    """The JAX-only options asked for that the model takes (`--scan-layers` ...); the others are left out."""
    from vit_flax import registry

    fields = registry.BY_NAME[registry_name].flax_class.__dataclass_fields__
    asked = {'scan_layers': args.scan_layers, 'remat_policy': args.remat_policy, 'attention_impl': args.attention_impl}
    return {option: value for option, value in asked.items()
            if option in fields and value != fields[option].default}


def flax_xla_flags(args) -> str:
    """The XLA_FLAGS of vit-flax's worker: as the trainer runs, the environment's with the trainer's defaults
    (vit_flax.training.xla_flags) added where the environment's do not name them; with --xla-flags-as-set, the
    environment's alone."""
    from vit_flax.training.xla_flags import with_trainer_flags

    environment = os.environ.get('XLA_FLAGS', '')
    return environment if args.xla_flags_as_set else with_trainer_flags(environment)


def run_model(name: str, args, directory: str) -> dict:
    model = MODELS[name]
    config = model.quick_config if args.quick else model.config(args.image_size)
    options = flax_options(model.registry_name, args)
    data = Path(directory) / f'{name}.npz'
    prepare(model, config, args, data)
    variants = chosen_variants(args)
    base = {'registry_name': model.registry_name, 'config': config, 'flax_options': options, 'data': str(data),
            'device': args.device, 'dtype': args.dtype, 'threads': args.threads,
            'flax_xla_flags': flax_xla_flags(args), 'keep_freed_memory': args.keep_freed_memory}
    log_dir = tempfile.mkdtemp(prefix=f'{name}-', dir=directory)
    # started together: importing is not timed, and overlapping it saves a few seconds per worker
    workers = {variant: Worker({**base, 'variant': variant}, log_dir) for variant in variants}
    results = {variant: {'memory': {}, **{phase: {'times': []} for phase in PHASES}} for variant in variants}

    def ask(variant, phase, op, **fields) -> dict:
        """The worker's reply; a worker that died (a crash in torch.compile) is failed from then on."""
        try:
            reply = workers[variant].ask(op, phase=phase, **fields)
        except WorkerFailed as error:
            reply = {'error': str(error)}
        if 'error' in reply:
            results[variant][phase]['error'] = reply['error']
        return reply

    try:
        for variant, worker_ in workers.items():
            try:
                results[variant]['keeps_freed_memory'] = worker_.receive()['keeps_freed_memory']
            except WorkerFailed as error:  # later questions get the same answer
                for phase in PHASES:
                    results[variant][phase]['error'] = str(error)
        for phase in PHASES:
            # one compiles at a time, so compile times are measured without contention
            for variant in variants:
                if 'error' not in results[variant][phase]:
                    results[variant][phase].update(ask(variant, phase, 'setup', warmup=args.warmup))
            for _ in range(args.steps):
                for variant in variants:
                    if 'error' not in results[variant][phase]:
                        if not args.no_idle_wait:
                            results[variant][phase].setdefault('settle_s', []).append(
                                settle([worker_.process.pid for worker_ in workers.values()]))
                        idle = {other: process_cpu_seconds(workers[other].process.pid)
                                for other in variants if other != variant}
                        reply = ask(variant, phase, 'step')
                        if 'seconds' in reply:
                            results[variant][phase]['times'].append(reply['seconds'])
                            results[variant][phase].setdefault('page_faults', []).append(reply['page_faults'])
                            count_idle_cpu(results, phase, idle, workers, reply['seconds'])
            for variant in variants:
                if 'error' not in results[variant][phase]:
                    results[variant]['memory'][phase] = ask(variant, phase, 'memory').get('peak_bytes')
    finally:
        for worker_ in workers.values():
            worker_.close()

    for variant in variants:
        for phase in PHASES:
            r = results[variant][phase]
            if 'error' not in r:
                r['median_s'], r['min_s'] = float(np.median(r['times'])), min(r['times'])
                if 'first_call_s' in r and variant == 'torch.compile':
                    r['compile_s'] = r['first_call_s'] - r['median_s']
    flax = results.get('flax', {phase: {} for phase in PHASES})
    for variant in variants:
        for phase in PHASES:
            if variant != 'flax' and 'median_s' in results[variant][phase] and 'median_s' in flax[phase]:
                results[variant][phase]['ratio'] = results[variant][phase]['median_s'] / flax[phase]['median_s']

    # model FLOPs per step, for MFU: analytic for ViT, else what XLA counts in the compiled Flax programs
    if model.registry_name == 'vit.ViT':
        forward = vit_forward_flops(config, args.batch, args.image_size)
        flops = {'infer': forward, 'train': 3 * forward, 'source': 'analytic matmul count'}
    else:
        flops = {phase: flax[phase].get('xla_flops') for phase in PHASES} | {'source': 'XLA cost_analysis'}
    return {'name': name, 'title': model.title, 'registry_name': model.registry_name, 'config': config,
            'flax_options': options, 'flops': flops, 'variants': results}


def chosen_variants(args) -> list[str]:
    return [v for v in VARIANTS if v in args.variants and not (args.no_compile and v == 'torch.compile')]


def settle(pids: list[int], *, window: float = 0.02, busy: float = 0.05, timeout: float = 2.0) -> float:
    """Wait until the processes `pids` together use under `busy` of a core over `window` seconds (at most
    `timeout`), and return the seconds waited. After a call, a worker's threads may spin on for a while (GNU
    OpenMP's OMP_WAIT_POLICY / GOMP_SPINCOUNT, Intel OpenMP's KMP_BLOCKTIME: 200 ms by default) and would take
    cores from the next variant's timed call."""
    start = time.perf_counter()
    before = [process_cpu_seconds(pid) for pid in pids]
    while time.perf_counter() - start < timeout:
        time.sleep(window)
        after = [process_cpu_seconds(pid) for pid in pids]
        used = sum(b - a for a, b in zip(before, after) if a is not None and b is not None)
        if used < busy * window:
            break
        before = after
    return time.perf_counter() - start


def count_idle_cpu(results: dict, phase: str, before: dict, workers: dict, seconds: float):
    """Add to each idle worker's account the CPU time it used while another variant's timed call ran, and that
    call's seconds: idle threads that spin (OpenMP's wait policy) or compile in the background take cores from
    the variant being timed."""
    for other, start in before.items():
        end = process_cpu_seconds(workers[other].process.pid)
        if start is not None and end is not None:
            account = results[other][phase]
            account['idle_cpu_s'] = account.get('idle_cpu_s', 0.0) + end - start
            account['idle_wall_s'] = account.get('idle_wall_s', 0.0) + seconds


# the report


def gpu_model(device: str) -> str | None:
    if device != 'cuda':
        return None
    import torch

    return torch.cuda.get_device_name()


def milliseconds(r: dict) -> str:
    if 'error' in r:
        return f"failed: {r['error']}"
    return f"{r['median_s'] * 1e3:,.1f} ({r['min_s'] * 1e3:,.1f})"


def compile_cell(variant: str, r: dict) -> str:
    if variant == 'flax' and 'compile_s' in r:
        return f"{r['lower_s']:.2f} + {r['compile_s']:.2f}"
    if variant == 'torch.compile' and 'compile_s' in r:
        return f"{r['compile_s']:.2f}"
    return '—'


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per model and variant."""
    args = results['args']
    peak = args['peak_tflops']
    header = ['model', 'variant', 'train step ms, median (min)', 'inference ms, median (min)',
              'torch / flax, train', 'torch / flax, inference', 'images/s, train / inference',
              'compile s, train / inference', 'peak memory MiB, train / inference', 'first loss, train / inference']
    if peak:
        header.insert(7, 'MFU, train / inference')
    rows = []
    for model in results['models']:
        for variant, r in model['variants'].items():
            phases = [r['train'], r['infer']]
            ratio = [f"{p['ratio']:.2f}x" if 'ratio' in p else '—' for p in phases]
            rate = [f"{args['batch'] / p['median_s']:,.1f}" if 'median_s' in p else '—' for p in phases]
            memory = [f"{r['memory'][phase] / 2**20:,.0f}" if phase in r['memory'] else '—' for phase in PHASES[::-1]]
            loss = [f"{p['first_loss']:.4f}" if 'first_loss' in p else '—' for p in phases]
            row = [model['title'], variant, milliseconds(r['train']), milliseconds(r['infer']), *ratio,
                   ' / '.join(rate), ' / '.join(compile_cell(variant, p) for p in phases), ' / '.join(memory),
                   ' / '.join(loss)]
            if peak:
                flops = [model['flops'].get(phase) for phase in PHASES[::-1]]
                row.insert(7, ' / '.join(f"{f / p['median_s'] / (peak * 1e12):.1%}" if 'median_s' in p and f else '—'
                                         for f, p in zip(flops, phases)))
            rows.append(row)
    return header, rows


def markdown_table(results: dict) -> str:
    header, rows = table(results)
    lines = ['| ' + ' | '.join(header) + ' |', '|---|---|' + '---:|' * (len(header) - 2)]
    return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def text_table(results: dict) -> str:
    header, rows = table(results)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def per_variant_and_phase(results: dict, key: str, value: Callable[[dict], str]) -> str:
    """'<model>: <variant> <phase> <value>, ...; ...' over the phase results that hold `key`, '' if none does."""
    parts = []
    for model in results['models']:
        cells = [f'{variant} {phase} {value(r[phase])}' for variant, r in model['variants'].items()
                 for phase in PHASES[::-1] if r[phase].get(key)]
        if cells:
            parts.append(f"{model['title']}: {', '.join(cells)}")
    return '; '.join(parts)


def notes(results: dict) -> list[str]:
    a, m = results['args'], results['machine']
    device = m['gpu'] or f"CPU ({m['cpu']}, {m['cpu_count']} cores)"
    threads = f" with {a['threads']} thread{'s' * (a['threads'] > 1)} per framework" if a['threads'] else ''
    lines = [
        f"Batch {a['batch']}, {a['image_size']} x {a['image_size']} images, {a['dtype']}, on {a['device']}{threads}; "
        f"medians (minima) of {a['steps']} repeats after {a['warmup']} warm-up calls, the variants alternating. "
        'torch / flax above 1: vit-flax is faster. Compile: flax `lower + compile`, torch.compile its first call '
        'minus the median call. Peak memory: '
        + ("the allocator's peak bytes in use since the start" if a['device'] == 'cuda' else
           "growth of the worker process's peak resident set (ru_maxrss) over its value after the imports "
           '(weights, optimiser state, activations, compiler; each variant in its own process); inference runs '
           'first, so the training figure is the whole run\'s peak') + '.',
    ]
    idle = per_variant_and_phase(results, 'idle_wall_s', lambda r: f"{r['idle_cpu_s'] / r['idle_wall_s']:.1%}")
    faults = per_variant_and_phase(results, 'page_faults', lambda r: f"{np.median(r['page_faults']):,.0f}")
    waits = [wait for model in results['models'] for r in model['variants'].values() for phase in PHASES
             for wait in r[phase].get('settle_s', [])]
    if waits:
        lines.append(f"Before each timed call the harness waited for every worker to go idle (under 5% of a core "
                     f"over 20 ms): median {np.median(waits) * 1e3:.0f} ms, longest {max(waits) * 1e3:.0f} ms.")
    if faults:
        lines.append('Minor page faults per timed call, median (memory the call touched for the first time, each fault '
                     f"a fresh page from the kernel): {faults}.")
    if idle:
        lines.append("CPU time the idle workers used while another variant's timed call ran, as a share of one "
                     "core over those calls (spinning threads or background work would show here and slow the "
                     f"variant being timed): {idle}.")
    for model in results['models']:
        flax_variant = model['variants'].get('flax', {phase: {} for phase in PHASES})
        flax_loss = flax_variant['train'].get('first_loss')
        others = [f"{v} {r['train']['first_loss'] - flax_loss:+.1e}" for v, r in model['variants'].items()
                  if v != 'flax' and 'first_loss' in r['train'] and flax_loss is not None]
        flops = ', '.join(f"{phase} {model['flops'][phase] / 1e9:,.2f}" for phase in PHASES[::-1]
                          if model['flops'].get(phase))
        options = ', '.join(f'{k}={v!r}' for k, v in model['flax_options'].items())
        temp = ', '.join(f"{phase} {flax_variant[phase]['xla_temp_bytes'] / 2**20:,.0f}"
                         for phase in PHASES[::-1] if flax_variant[phase].get('xla_temp_bytes'))
        lines.append(f"{model['title']} (`{model['registry_name']}` {json.dumps(model['config'])}"
                     f"{'; vit-flax with ' + options if options else ''}): GFLOPs per "
                     f"step {flops or 'unknown'} ({model['flops']['source']}); XLA's temporary buffers, MiB: "
                     f"{temp or 'unknown'}; first training loss minus flax's: {', '.join(others) or '—'}.")
    kept = sorted({f"{v}: {'yes' if r.get('keeps_freed_memory') else 'no'}"
                   for model in results['models'] for v, r in model['variants'].items()})
    lines.append("Freed memory kept for reuse (JAX's CPU computations in the calling thread, glibc malloc with no "
                 "mmap and no trimming, as vit-flax's trainer's keep_freed_memory sets it on CPU; "
                 f"`--keep-freed-memory`): {', '.join(kept)}.")
    load = ', '.join(f'{x:.2f}' for x in m['load_average'])
    settings = ', '.join(f'{name}={value!r}' for name, value in m.get('settings', {}).items()) or 'none'
    flax_flags = '' if 'flax_xla_flags' not in m else f"; vit-flax's XLA_FLAGS {m['flax_xla_flags']!r} " + (
        '(as set)' if a.get('xla_flags_as_set') else "(the trainer's)")
    lines += [f"Machine: {device}; jax {m['jax']}, torch {m['torch']}, vit-pytorch {m['vit_pytorch']}, Python "
              f"{m['python']}; kernel, thread and allocator settings {settings}{flax_flags}; transparent huge pages "
              f"{m.get('transparent_huge_pages') or 'unknown'}; load average (1, 5, 15 min) at the end {load}; "
              f"{results['date']}.",
              f"Command: `{results['command']}`"]
    return lines


def readme_with_results(readme: str, text: str) -> str:
    start, end = README_MARKERS
    if start not in readme or end not in readme:
        raise SystemExit(f'the README has no {start} ... {end} markers to write between')
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f'{head}{start}\n{text}\n{end}{tail}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--steps', type=int, default=5, help='timed repeats per variant and phase')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls after the first (compiling) one')
    parser.add_argument('--no-compile', action='store_true', help='skip torch.compile')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS),
                        help='the variants to run, e.g. one alone to time it without the others alive; ratios need '
                             'flax')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    parser.add_argument('--threads', type=int,
                        help='CPU threads per framework (the first N cores this process may use; default: all). '
                             "On a loaded machine 1 is steadier: torch's OpenMP threads wait for each other at "
                             'every op, and stall for a scheduler slice when another process holds a core')
    parser.add_argument('--peak-tflops', type=float,
                        help='peak FLOP/s of the device, for MFU (default on cuda: 989, H200 bfloat16 dense; '
                             'none on cpu)')
    parser.add_argument('--scan-layers', action='store_true', help="vit-flax's layer scan (models that take it)")
    # checked by the parent in main(): importing vit_flax here would load jax into the torch workers too
    parser.add_argument('--remat-policy', help="vit-flax's rematerialisation policy (a jax.checkpoint_policies name)")
    parser.add_argument('--attention-impl', default='explicit',
                        help="vit-flax's attention: explicit, xla, cudnn (cuDNN's fused flash attention on a GPU) "
                             'or auto')
    parser.add_argument('--xla-flags-as-set', action='store_true',
                        help="run vit-flax with the environment's XLA_FLAGS alone; by default the trainer's "
                             '(vit_flax.training.xla_flags) are added where the environment does not name them')
    parser.add_argument('--no-idle-wait', action='store_true',
                        help='time each call without first waiting for every worker to go idle (what the harness did '
                             'before; the notes then show what the idle workers took)')
    parser.add_argument('--keep-freed-memory', choices=('flax', 'both', 'neither'), default='flax',
                        help="which frameworks run with vit-flax's trainer's memory setting for CPU runs "
                             '(vit_flax.training.allocator: freed memory stays for the next step); by default vit-flax '
                             'alone, as its trainer runs')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quick', action='store_true',
                        help='tiny models for a smoke test (ViTs: image 32, patch 8, dim 32, depth 2), 2 steps')
    parser.add_argument('--markdown', action='store_true', help='print the markdown table and notes')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON to PATH')
    parser.add_argument('--write-readme', metavar='README', type=Path,
                        help=f'write the table between {README_MARKERS[0]} and {README_MARKERS[1]} in README')
    parser.add_argument('--worker', help=argparse.SUPPRESS)  # the JSON spec of a worker process
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.steps = 32, 2
    if args.peak_tflops is None and args.device == 'cuda':
        args.peak_tflops = 989.0
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    from vit_flax.layers import check_attention_impl
    from vit_flax.scan import check_remat_policy

    try:
        check_attention_impl(args.attention_impl)
        check_remat_policy(args.remat_policy)
    except ValueError as error:
        raise SystemExit(f'{PROGRAM}: {error}') from None

    with tempfile.TemporaryDirectory(prefix='side_by_side-') as directory:
        models = []
        for name in args.models:
            print(f'{name}: running {", ".join(chosen_variants(args))} ...', file=sys.stderr)
            models.append(run_model(name, args, directory))
    results = {
        'models': models,
        'args': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'worker'},
        'machine': {'cpu': cpu_model(), 'cpu_count': cpu_count(), 'gpu': gpu_model(args.device),
                    'load_average': os.getloadavg(), 'python': platform.python_version(),
                    'settings': kernel_settings(), 'flax_xla_flags': flax_xla_flags(args),
                    'transparent_huge_pages': transparent_huge_pages(),
                    **{name.replace('-', '_'): importlib.metadata.version(name)
                       for name in ('jax', 'torch', 'vit-pytorch')}},
        'date': datetime.date.today().isoformat(),
        'command': ' '.join([PROGRAM, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
    }
    markdown = markdown_table(results) + '\n\n' + '\n'.join(f'- {note}' for note in notes(results))
    print(markdown if args.markdown else text_table(results) + '\n\n' + '\n'.join(notes(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write_readme:
        args.write_readme.write_text(readme_with_results(args.write_readme.read_text(), markdown))
    return results


if __name__ == '__main__':
    main()
