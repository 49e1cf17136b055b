"""Layer scan and rematerialisation: the JAX-only options `scan_layers` and `remat_policy` of the transformer stacks.

`scan_layers=True` runs a stack's `depth` layers as one `nn.scan` over a module holding one layer (big_vision's
`scan` switch), so XLA compiles one layer instead of `depth` and compile time stays flat as the model deepens. The
math and the per-layer submodules are the same; the parameters get a leading layer axis and live under one module
named after torch's module list plus SCANNED_SUFFIX. For vit.ViT:

    unscanned   params/transformer/layers_{i}_0/to_qkv/kernel   (dim, 3 * inner)         for each i < depth
    scanned     params/transformer/layers_scan/0/to_qkv/kernel   (depth, dim, 3 * inner)

both exported as torch's `transformer.layers.{i}.0.to_qkv.weight` (`per_layer_path` is the rule, shared by the
converters and the Recorder). Dropout draws a different mask in every layer; attention maps sown into
'intermediates' come out stacked on the same leading axis.

`remat_policy` (default None: keep every activation) names a `jax.checkpoint_policies` policy: which intermediate
values of a layer the backward pass keeps, the rest being recomputed. It applies with or without the scan: to the
scanned layer, or to each attention and feed-forward module of an unscanned stack.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from vit_flax.layers import ATTENTION_MAPS

SCANNED_SUFFIX = '_scan'

# the policies that take no arguments (the others, such as save_only_these_names, are policy factories)
REMAT_POLICIES = (
    'everything_saveable', 'nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable',
    'checkpoint_dots', 'checkpoint_dots_with_no_batch_dims',
)


def check_remat_policy(remat_policy: str | None):
    if remat_policy is not None and remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f'unknown remat_policy={remat_policy!r}: use None (no rematerialisation) or one of the '
            f'jax.checkpoint_policies {", ".join(REMAT_POLICIES)}'
        )


def remat(module: type[nn.Module], remat_policy: str | None, *, static_argnums=(), prevent_cse: bool = True):
    """`module` rematerialised under `remat_policy`, or `module` itself for None. `static_argnums` count `self` as 0:
    Python flags such as `train` must stay Python values."""
    if remat_policy is None:
        return module
    check_remat_policy(remat_policy)
    return nn.remat(module, policy=getattr(jax.checkpoint_policies, remat_policy), static_argnums=static_argnums,
                    prevent_cse=prevent_cse)


def layer_scan(layer: type[nn.Module], depth: int, remat_policy: str | None, *, scanned: int = 0, broadcast: int = 0,
               flags: int = 0) -> type[nn.Module]:
    """`layer` run `depth` times by nn.scan, each run with its own parameters (stacked on a leading axis), dropout
    masks and sown attention maps. `layer.__call__(x, *per_layer, *shared, *flags)` returns (x, None): the carry and
    nothing per layer. After `x` come `scanned` arrays with one row per layer (vit_5's layer scales), `broadcast`
    arrays every layer sees whole (rotary tables, masks), then `flags` Python values every layer sees unchanged
    (vit's `train`)."""
    # inside a scan XLA cannot merge the recomputation into the forward pass anyway, so the CSE barriers that
    # prevent_cse inserts would only slow it down (flax's advice for remat under scan)
    first_flag = 2 + scanned + broadcast  # after self and x
    layer = remat(layer, remat_policy, static_argnums=tuple(range(first_flag, first_flag + flags)), prevent_cse=False)
    return nn.scan(
        layer,
        variable_axes={'params': 0, ATTENTION_MAPS: 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(0,) * scanned + (nn.broadcast,) * (broadcast + flags),
        length=depth,
    )


def scanned_name(module_list: str) -> str:
    """The name of the scanned module that holds torch's `module_list` ('layers' -> 'layers_scan')."""
    return module_list + SCANNED_SUFFIX


def scanned_axes(path: tuple[str, ...]) -> int:
    """How many leading layer axes a variable at the module path `path` has: one per scanned module above it."""
    return sum(name.endswith(SCANNED_SUFFIX) for name in path)


def per_layer_path(path: tuple[str, ...], index: tuple[int, ...]) -> tuple[str, ...]:
    """The module path of layer `index` of the scanned modules in `path`, as the unscanned stack names it:
    ('transformer', 'layers_scan', '0'), (3,) -> ('transformer', 'layers_3', '0'), which the naming rule of
    converters/rules.py turns into torch's 'transformer.layers.3.0'."""
    layers = iter(index)
    return tuple(f'{name.removesuffix(SCANNED_SUFFIX)}_{next(layers)}' if name.endswith(SCANNED_SUFFIX) else name
                 for name in path)
