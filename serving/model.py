"""Load a Keras `.keras` file or a TensorFlow SavedModel folder, read its signature, predict on numpy.

The only module of the server that imports TensorFlow, and it does so lazily in `load_model`, so the
server can listen (and answer health checks) while TensorFlow is still importing.

`Model.predict` is meant to run on one dedicated thread: it calls one traced graph per model whose
batch dimension is free, so batches of any size reuse it without retracing.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrun.errors import InvalidInput, Unprocessable
from serving.types import NUMPY_DTYPES, TensorSpec

KERAS = "tensorflow_keras"
SAVEDMODEL = "tensorflow_savedmodel"
SIGNATURE = "serving_default"

# TensorFlow dtype name -> V2 datatype
_V2_OF_TF = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "string": "BYTES",
}


@dataclass
class Model:
    """A loaded model: its signature and a predict function from {input: array} to {output: array}."""

    path: Path
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    _call: Callable[[dict], dict]
    _keepalive: object = None  # the loaded SavedModel object: its variables die with it

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        try:
            result = self._call({name: tf.constant(array) for name, array in inputs.items()})
        except tf.errors.InvalidArgumentError as exc:  # the graph itself refused the values
            raise InvalidInput(f"the model rejected the input: {exc.message.splitlines()[0]}") from None
        return {name: tensor.numpy() for name, tensor in result.items()}

    @property
    def batchable(self) -> bool:
        """Rows of concurrent requests can be concatenated: every tensor has a free first dimension."""
        return all(spec.shape[:1] == (-1,) for spec in self.inputs + self.outputs)

    def warm_up(self) -> dict[str, np.ndarray]:
        """One inference on a row of zeros (empty strings), so the first real request is not the slow one."""
        return self.predict({spec.name: _example(spec) for spec in self.inputs})


def detect_kind(path: Path) -> str:
    """KERAS for a `.keras` file, SAVEDMODEL for a folder with saved_model.pb; otherwise a clear error."""
    if path.is_file() and path.suffix == ".keras":
        return KERAS
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SAVEDMODEL
    found = "a folder without saved_model.pb" if path.is_dir() else f"a {path.suffix or 'extensionless'} file"
    raise Unprocessable(f"{path} is not a model I can serve: expected a Keras .keras file or a TensorFlow "
                        f"SavedModel folder (with saved_model.pb), found {found}")


def load_model(path: Path, *, intra_op_threads: int = 1) -> Model:
    kind = detect_kind(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the server log
    import tensorflow as tf

    _configure_threads(tf, intra_op_threads)
    try:
        return _load_keras(tf, path) if kind == KERAS else _load_savedmodel(tf, path)
    except Unprocessable:
        raise
    except Exception as exc:  # a corrupt or incompatible file: say which and why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unprocessable(f"could not load {path} as {kind}: {reason}") from exc


def _configure_threads(tf, intra_op_threads: int) -> None:
    # Only possible before TensorFlow's runtime starts; a second load in one process keeps the first setting.
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    except RuntimeError:
        pass


def _load_keras(tf, path: Path) -> Model:
    import keras

    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    input_tensors, structured = _keras_inputs(model)
    specs = {name: tf.TensorSpec(tensor.shape, tensor.dtype, name=name) for name, tensor in input_tensors.items()}
    output_names = _keras_output_names(model)
    names = list(specs)

    def call(inputs):
        # Give the model the structure it was built with: a dict, or its tensors in order.
        if not structured:
            inputs = inputs[names[0]] if len(names) == 1 else [inputs[name] for name in names]
        return _as_dict(model(inputs, training=False), output_names)

    function = tf.function(call, input_signature=[specs], autograph=False).get_concrete_function()
    return _checked_fast_path(tf, Model(
        path=path,
        platform=KERAS,
        inputs=[_spec(name, spec) for name, spec in specs.items()],
        outputs=[_spec(name, spec) for name, spec in function.structured_outputs.items()],
        _call=function,
        _keepalive=model,
    ), function)


def _keras_inputs(model) -> tuple[dict, bool]:
    """(input name -> symbolic tensor in the order the model was built with, whether it takes a dict)."""
    struct = getattr(model, "_inputs_struct", None)  # keeps dict order; model.inputs is sorted by name
    if isinstance(struct, dict):
        return dict(struct), True
    try:
        tensors = model.inputs
    except AttributeError:
        tensors = None
    if not tensors:
        raise Unprocessable("the Keras model has no defined inputs (a subclassed model?); save a functional "
                            "or Sequential model with an Input layer")
    return {tensor.name: tensor for tensor in tensors}, False


def _keras_output_names(model) -> list[str]:
    """Names for the model's outputs: a functional model's `output_names` (its output layers' names); a
    Sequential model has no `output_names`, so its one output is named after its last layer."""
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    layers = getattr(model, "layers", None)
    if layers:
        return [layers[-1].name]
    return []


def _as_dict(outputs, names: list[str]) -> dict:
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, list | tuple):
        return dict(zip(names, outputs, strict=True))
    return {names[0] if names else "output_0": outputs}


def _load_savedmodel(tf, path: Path) -> Model:
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        raise Unprocessable(f"{path} has no '{SIGNATURE}' signature; it has: {sorted(signatures) or 'none'}")
    function = signatures[SIGNATURE]
    args, kwargs = function.structured_input_signature
    if args:
        raise Unprocessable(f"{path}: the '{SIGNATURE}' signature takes positional inputs; expected named inputs")
    return _checked_fast_path(tf, Model(
        path=path,
        platform=SAVEDMODEL,
        inputs=[_spec(name, spec) for name, spec in kwargs.items()],
        outputs=[_spec(name, spec) for name, spec in function.structured_outputs.items()],
        _call=lambda inputs: function(**inputs),
        _keepalive=loaded,
    ), function)


def _checked_fast_path(tf, model: Model, function) -> Model:
    """Call the traced function on its flat inputs, skipping TensorFlow's per-call argument binding: that
    binding is about half the Python time of a call for a small model, and it holds the GIL. The flat call
    is internal TensorFlow API, so it is used only when it answers exactly like the public call on a random
    example (which also catches a wrong input order); otherwise the public call stays."""
    call_flat = getattr(function, "_call_flat", None)
    if call_flat is None:
        return model
    # tf.nest flattens a dict in sorted-key order, which is the traced function's argument order.
    input_order = tf.nest.flatten({spec.name: spec.name for spec in model.inputs})
    captured = function.captured_inputs

    def fast(inputs: dict) -> dict:
        return call_flat([inputs[name] for name in input_order], captured)  # packs outputs into their dict

    example = {spec.name: tf.constant(_example(spec, random=True)) for spec in model.inputs}
    try:
        public, flat = model._call(example), fast(example)
        same = isinstance(flat, dict) and public.keys() == flat.keys() and all(
            public[name].dtype == flat[name].dtype and np.array_equal(public[name].numpy(), flat[name].numpy())
            for name in public)
    except Exception:
        same = False
    if same:
        model._call = fast
    return model


def _spec(name: str, tf_spec) -> TensorSpec:
    datatype = _V2_OF_TF.get(tf_spec.dtype.name)
    if datatype is None:
        raise Unprocessable(f"tensor '{name}' has dtype {tf_spec.dtype.name}, which the Open Inference "
                            f"Protocol cannot carry; expected one of {sorted(_V2_OF_TF)}")
    if tf_spec.shape.rank is None:
        raise Unprocessable(f"tensor '{name}' has unknown rank; the model must declare its input shapes")
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in tf_spec.shape.as_list()))


def _example(spec: TensorSpec, random: bool = False) -> np.ndarray:
    """One row of zeros / empty strings for `spec` (or random values, to tell inputs apart)."""
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))  # different values for each input
    if spec.datatype == "BYTES":
        values = [str(v).encode() for v in rng.integers(0, 1000, shape).ravel()] if random else [b""] * int(np.prod(shape))
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    dtype = NUMPY_DTYPES[spec.datatype]
    if not random:
        return np.zeros(shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    return rng.uniform(1, 3, shape).astype(dtype)
