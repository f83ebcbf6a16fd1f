"""Load a Keras `.keras` file or a TensorFlow SavedModel folder, read its signature, predict on numpy.

The only module of the server that imports TensorFlow, and it does so lazily in `load_model`, so the
server can listen (and answer health checks) while TensorFlow is still importing.

`Model.predict` is meant to run on one dedicated thread: it calls one traced graph per model whose
batch dimension is free, so batches of any size reuse it without retracing.

Small models (weights up to `GRAPH_MAX_WEIGHT_BYTES`) run in graph mode instead: the traced function with its
variables frozen into constants, imported into a `tf.Graph` and run by a `tf.compat.v1.Session` built once at
load, through the Session's callable for fixed feeds and fetches, with the ops on the calling thread. That call
takes numpy in and gives numpy out with almost no Python: an eager function call (tensor conversions, argument
binding) or `Session.run` (feed and fetch handling) costs ten times more than running a small tabular model,
and all of it holds the GIL the event loop needs. It is used
only when the frozen graph holds nothing but the model's own inputs (no lookup table or other resource the
freezing cannot carry) and answers like the eager function on example batches; otherwise the eager path
stays. The server logs which path a model takes.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrun.errors import InvalidInput, Unprocessable
from serving.types import NUMPY_DTYPES, TensorSpec

log = logging.getLogger(__name__)

KERAS = "tensorflow_keras"
SAVEDMODEL = "tensorflow_savedmodel"
SIGNATURE = "serving_default"
# Largest total size of weights run in graph mode: freezing copies every weight into the graph as a constant
# (and a serialized graph must stay far below protobuf's 2 GB), so a large model keeps the eager path.
GRAPH_MAX_WEIGHT_BYTES = 64 * 1024 * 1024

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
    _function: object = None  # the traced concrete function behind `_call`
    _graph: GraphSession | None = None  # set when the model runs in graph mode
    inference_path: str = "eager"  # "graph" or "eager", for logs and tests

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._graph is not None:
            return self._graph.run(inputs, self.predict_eager)
        return self.predict_eager(inputs)

    def predict_eager(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
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


def load_model(path: Path, *, intra_op_threads: int = 1, graph_max_bytes: int = GRAPH_MAX_WEIGHT_BYTES) -> Model:
    """Load the model; run it in graph mode when its weights take at most `graph_max_bytes` and the graph
    answers like the eager function (see the module's docstring)."""
    kind = detect_kind(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner out of the server log
    import tensorflow as tf

    _configure_threads(tf, intra_op_threads)
    try:
        model = _load_keras(tf, path) if kind == KERAS else _load_savedmodel(tf, path)
    except Unprocessable:
        raise
    except Exception as exc:  # a corrupt or incompatible file: say which and why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unprocessable(f"could not load {path} as {kind}: {reason}") from exc
    _choose_path(tf, model, intra_op_threads, graph_max_bytes)
    return model


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
        _function=function,
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
        _function=function,
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


class GraphSession:
    """The model's traced function with its variables frozen into constants, in its own tf.Graph, run by a
    tf.compat.v1.Session: numpy in, numpy out."""

    def __init__(self, tf, function, inputs: list[TensorSpec], intra_op_threads: int):
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        # Freezing turns variables into constants; any other captured resource (a lookup table's handle, say)
        # would stay an input the Session cannot fill. Refuse before freezing, which would only warn.
        resources = sum(1 for tensor in function.captured_inputs if tensor.dtype == tf.resource)
        if resources > len(function.variables):
            raise ValueError(f"the model holds {resources - len(function.variables)} resource(s) besides its "
                             "variables (a lookup table?)")
        frozen = convert_variables_to_constants_v2(function)
        # The frozen function's inputs and outputs are its arguments and results flattened the tf.nest way
        # (a dict in sorted-key order); the comparison with the eager function at load catches any mix-up.
        input_names = tf.nest.flatten({spec.name: spec.name for spec in inputs})
        output_names = tf.nest.flatten({name: name for name in function.structured_outputs})
        if len(frozen.inputs) != len(input_names) or len(frozen.outputs) != len(output_names):
            raise ValueError(f"the frozen graph takes {len(frozen.inputs)} inputs and gives {len(frozen.outputs)} "
                             f"outputs; the model has {len(input_names)} and {len(output_names)} (a resource such "
                             "as a lookup table that freezing cannot carry?)")
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        resources = [op.name for op in self.graph.get_operations()
                     if any(t.dtype in (tf.resource, tf.variant) for t in op.outputs)]
        if resources:
            raise ValueError(f"the frozen graph still holds resources ({', '.join(resources[:3])})")
        self.placeholders = {name: self.graph.get_tensor_by_name(t.name) for name, t in zip(input_names, frozen.inputs)}
        # Inputs whose numpy dtype the Session would silently cast to the placeholder's: such a call goes to
        # the eager path, which refuses it as it always did. Strings are fed as object arrays and not checked.
        self.dtypes = {name: tensor.dtype.as_numpy_dtype for name, tensor in self.placeholders.items()
                       if tensor.dtype != tf.string}
        self.fetches = [self.graph.get_tensor_by_name(t.name) for t in frozen.outputs]
        self.output_names = output_names
        # Each placeholder's static shape (None: unknown rank); a feed that does not fit goes to the eager path,
        # as the Session's own check before running would have sent it.
        self.shapes = {name: tuple(tensor.shape.as_list()) if tensor.shape.rank is not None else None
                       for name, tensor in self.placeholders.items()}
        # Ops run on the calling thread (a negative inter-op count): a call needs no hand-off to TensorFlow's
        # inter-op pool, which with one thread ran the ops one after another all the same.
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                          inter_op_parallelism_threads=-1)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        # A callable with the feeds in a fixed order: Session.run's Python (feed dict, fetch handling, checks)
        # costs about ten times what running this small a graph does, all of it holding the GIL. The checks it
        # makes are done in run() instead.
        self.feed_order = list(self.placeholders)
        feeds = [self.placeholders[name] for name in self.feed_order]
        try:  # the Session's own callable for fixed feeds and fetches (what Keras' graph functions used)
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions(feed=[t.name for t in feeds], fetch=[t.name for t in self.fetches])
            self.call = self.session._make_callable_from_options(options)
        except AttributeError:  # a TensorFlow without it (private API): the same through Session.run
            self.call = self.session.make_callable(self.fetches, feeds)
        self.errors = (tf.errors.InvalidArgumentError,)

    def run(self, inputs: dict[str, np.ndarray], eager: Callable[[dict], dict]) -> dict[str, np.ndarray]:
        if inputs.keys() != self.placeholders.keys():
            return eager(inputs)
        feeds = []
        for name in self.feed_order:
            array = inputs[name]
            dtype, shape = self.dtypes.get(name), self.shapes[name]
            if dtype is not None and array.dtype != dtype or not _fits(array.shape, shape):
                return eager(inputs)
            feeds.append(array)
        try:
            values = self.call(*feeds)
        except self.errors as exc:  # the graph itself refused the values
            raise InvalidInput(f"the model rejected the input: {exc.message.splitlines()[0]}") from None
        return dict(zip(self.output_names, values))


def _fits(shape: tuple, static: tuple | None) -> bool:
    """Does an array of `shape` fit a placeholder of `static` shape (None for a free dimension or rank)?"""
    if static is None:
        return True
    return len(shape) == len(static) and all(want is None or want == got for want, got in zip(static, shape))


def _weight_bytes(function) -> int:
    return sum(v.shape.num_elements() * v.dtype.size for v in function.variables)


def _choose_path(tf, model: Model, intra_op_threads: int, max_bytes: int) -> None:
    """Run `model` in graph mode when it is small enough and the graph answers like the eager function on the
    warm-up batch (zeros, one row) and on random rows; otherwise keep the eager path. Logs which one."""
    size = _weight_bytes(model._function)
    if size > max_bytes:
        log.info("%s: eager inference (weights %s > graph-mode limit %s)", model.path.name, _mb(size), _mb(max_bytes))
        return
    graph = None
    try:
        graph = GraphSession(tf, model._function, model.inputs, intra_op_threads)
        for example in ({spec.name: _example(spec) for spec in model.inputs},
                        {spec.name: _example(spec, random=True, rows=3) for spec in model.inputs}):
            if not _same(model.predict_eager(example), graph.run(example, _no_fallback)):
                raise ValueError("its outputs differ from the eager function's")
    except Exception as exc:
        if graph is not None:
            graph.session.close()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.info("%s: eager inference (graph mode unavailable: %s)", model.path.name, reason[:200])
        return
    model._graph, model.inference_path = graph, "graph"
    log.info("%s: graph-mode inference (tf.compat.v1.Session; weights %s)", model.path.name, _mb(size))


def _no_fallback(inputs):
    raise ValueError("the Session refused the example")


def _same(want: dict, got: dict) -> bool:
    if want.keys() != got.keys():
        return False
    for name, expected in want.items():
        actual = np.asarray(got[name])
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return False
        if expected.dtype.kind in "fc":
            if not np.allclose(actual, expected, rtol=1e-6, atol=1e-7, equal_nan=True):
                return False
        elif not np.array_equal(actual, expected):
            return False
    return True


def _mb(size: int) -> str:
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MB"


def _spec(name: str, tf_spec) -> TensorSpec:
    datatype = _V2_OF_TF.get(tf_spec.dtype.name)
    if datatype is None:
        raise Unprocessable(f"tensor '{name}' has dtype {tf_spec.dtype.name}, which the Open Inference "
                            f"Protocol cannot carry; expected one of {sorted(_V2_OF_TF)}")
    if tf_spec.shape.rank is None:
        raise Unprocessable(f"tensor '{name}' has unknown rank; the model must declare its input shapes")
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in tf_spec.shape.as_list()))


def _example(spec: TensorSpec, random: bool = False, rows: int = 1) -> np.ndarray:
    """`rows` rows of zeros / empty strings for `spec` (or random values, to tell inputs apart)."""
    shape = tuple(rows if d == -1 else d for d in spec.shape)
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
