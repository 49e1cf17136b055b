"""vit_nd_masking: the N-D block-causal masks against vit-pytorch's own mask functions (`nd_causal_mask_fn`,
`get_nd_causal_mask_fn`) evaluated over every (query, key) pair, with and without a class token, and the checks of
`causal_dims`."""

import numpy as np
import pytest
import torch

from vit_flax import converters
from vit_flax.vit_nd_masking import causal_dims_tuple, check_causal_dims, get_nd_causal_mask, nd_causal_mask


def masking():
    return converters.import_vit_pytorch('vit_pytorch.vit_nd_masking')


def evaluated(mask_fn, n: int) -> np.ndarray:
    """vit-pytorch's dense evaluation, broadcast to (n, n) (with no causal dimension it returns the query's shape)."""
    mask = mask_fn(0, 0, torch.arange(n)[:, None], torch.arange(n)[None, :]).numpy()
    return np.broadcast_to(mask, (n, n))


@pytest.mark.parametrize('grid, causal_dims', [
    ((2, 3, 2), (0,)), ((3, 2, 4), (1, 2)), ((5,), (0,)), ((2, 2, 3, 2), (3, 0)), ((3, 4), ()), ((1, 3), (0, 1)),
])
@pytest.mark.parametrize('has_cls', [False, True])
def test_nd_causal_mask_is_vit_pytorchs_mask_function(grid, causal_dims, has_cls):
    n = int(np.prod(grid)) + has_cls
    expected = evaluated(masking().nd_causal_mask_fn(grid, causal_dims, has_cls=has_cls), n)
    mask = nd_causal_mask(grid, causal_dims, has_cls=has_cls)
    assert mask.dtype == bool and mask.shape == (n, n)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize('causal_dims', [1, (1,), [0, 2], (2, 1, 0)])
@pytest.mark.parametrize('has_cls', [False, True])
def test_get_nd_causal_mask_is_vit_pytorchs_getter(causal_dims, has_cls):
    grid = (2, 3, 2)
    mask_fn = masking().get_nd_causal_mask_fn(grid, causal_dims, ndim=3, has_cls=has_cls)
    mask = get_nd_causal_mask(grid, causal_dims, ndim=3, has_cls=has_cls)
    np.testing.assert_array_equal(mask, evaluated(mask_fn, 12 + has_cls))


def test_defaults_follow_vit_pytorch():
    """No class token by default (vit-pytorch's `has_cls=False`); no causal dims, no mask."""
    assert masking().get_nd_causal_mask_fn((2, 2), None) is None
    assert get_nd_causal_mask((2, 2), None) is None
    assert nd_causal_mask((2, 2), (0,)).shape == (4, 4)
    # causal along dimension 0 of a 2 x 2 grid: the first row of patches cannot see the second
    np.testing.assert_array_equal(nd_causal_mask((2, 2), (0,)), [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1],
                                                                 [1, 1, 1, 1]])
    assert causal_dims_tuple(None) is None and causal_dims_tuple(2) == (2,) and causal_dims_tuple([0, 1]) == (0, 1)


@pytest.mark.parametrize('causal_dims', [3, (0, 3), -1, (1.0,), True])
def test_causal_dims_outside_ndim_are_refused(causal_dims):
    with pytest.raises(ValueError, match=r'each causal dimension must be between 0 and 2, got causal_dims='):
        get_nd_causal_mask((2, 2, 2), causal_dims, ndim=3)
    with pytest.raises(ValueError, match=r'each causal dimension must be between 0 and 2'):
        check_causal_dims(causal_dims, 3)


def test_vit_pytorch_asserts_the_same_range():
    with pytest.raises(AssertionError, match='each causal dimension must be between 0 and 2'):
        masking().get_nd_causal_mask_fn((2, 2, 2), (0, 3), ndim=3)
