"""The data plane's request checks against a model's signature, for shapes the test models do not have: a fixed
first dimension (a model that is not batched) and free dimensions after the first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from modelrun.errors import InvalidInput
from serving.dataplane import DataPlane
from serving.types import InferRequest, TensorSpec


@dataclass
class Signature:  # what DataPlane.set_model reads of a model
    inputs: list[TensorSpec]
    outputs: list[TensorSpec] = field(default_factory=lambda: [TensorSpec("y", "FP32", (-1, 1))])
    platform: str = "tensorflow_keras"


class Echo:  # stands in for the batcher: answers one output row per input row
    async def predict(self, inputs, tag=None, started=None):
        (first, *_) = inputs.values()
        return {"y": np.zeros((first.shape[0] if first.ndim else 1, 1), np.float32)}


def infer(spec: TensorSpec, array: np.ndarray):
    plane = DataPlane("m", 1)
    plane.set_model(Signature([spec]), Echo())
    request = InferRequest("m", "", "", {spec.name: array})
    return asyncio.run(plane.infer(request))


def test_a_fixed_first_dimension_takes_only_that_many_rows():
    spec = TensorSpec("x", "FP32", (1, 8))
    assert infer(spec, np.zeros((1, 8), np.float32)).outputs["y"].shape == (1, 1)
    with pytest.raises(InvalidInput, match=r"input 'x': expected shape \[1, 8\], got \[3, 8\]"):
        infer(spec, np.zeros((3, 8), np.float32))


def test_free_dimensions_after_the_first_take_any_size_and_fixed_ones_do_not():
    assert infer(TensorSpec("x", "FP32", (-1, -1)), np.zeros((2, 5), np.float32)).outputs["y"].shape == (2, 1)
    spec = TensorSpec("x", "FP32", (-1, -1, 3))
    assert infer(spec, np.zeros((2, 7, 3), np.float32)).outputs["y"].shape == (2, 1)
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, -1, 3\], got \[2, 7, 4\]"):
        infer(spec, np.zeros((2, 7, 4), np.float32))
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 8\], got \[2, 8, 1\]"):
        infer(TensorSpec("x", "FP32", (-1, 8)), np.zeros((2, 8, 1), np.float32))


def test_a_datatype_is_checked_by_name_whatever_the_byte_order():
    spec = TensorSpec("x", "FP32", (-1, 2))
    assert infer(spec, np.zeros((1, 2), ">f4")).outputs["y"].shape == (1, 1)  # big-endian FP32 is FP32
    with pytest.raises(InvalidInput, match="input 'x': expected FP32, got FP64"):
        infer(spec, np.zeros((1, 2), np.float64))


def test_a_nan_is_named_with_its_row_and_column():
    bad = np.zeros((2, 2), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(InvalidInput, match="input 'x' has NaN at row 1, column 0"):
        infer(TensorSpec("x", "FP32", (-1, 2)), bad)
