"""Arrays between torch, numpy and jax, bfloat16 included (numpy has no bfloat16; ml_dtypes does). torch is imported
only where a tensor is involved: the numpy paths never load it."""

from __future__ import annotations

import ml_dtypes
import numpy as np


def is_torch_tensor(value) -> bool:
    return type(value).__module__.startswith('torch')


def to_numpy(value) -> np.ndarray:
    """A numpy view of a torch tensor, jax array or array-like, bf16 included."""
    if is_torch_tensor(value):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bf16; ml_dtypes does
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    return np.asarray(value)


def contiguous(array) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray would turn a 0-d array into shape (1,))."""
    return np.require(array, requirements='C')


def to_tensor(array: np.ndarray):
    """A torch tensor owning a contiguous copy of `array`, bf16 included."""
    import torch

    array = np.array(array, copy=True, order='C')
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
