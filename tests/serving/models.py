"""Small Keras models for tests and benchmarks, built fast (no training) and saved into a folder.

Every builder is seeded, so two calls give the same weights. Shared with other test packages:
    save_dense8(dir)            -> dir/dense8.keras   (Input(8) -> Dense(64, relu) -> Dense(1))
    save_sequential8(dir)       -> dir/sequential8.keras (the same layers as a keras.Sequential)
    export_savedmodel(model, d) -> d/<name>_savedmodel (model.export(), signature serving_default)
    save_tabular(dir)           -> dir/tabular.keras  (one named input per feature: age, rooms, city, garden)
    save_dtype_model(dir, dt)   -> dir/dtype_<dt>.keras (one 2-D input of V2 datatype dt: INT32, FP16, FP64, BOOL, ...)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CITIES = ["berlin", "paris", "rome"]
DTYPE_MODELS = {"INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64", "BOOL": "bool"}


def _keras():
    import keras

    return keras


def build_dense8(seed: int = 0, name: str = "dense8"):
    """The benchmark's 8-feature regression model. Input is named `x`, shape [-1, 8] FP32."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(8,), name="x")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="y")(hidden)
    return keras.Model(inputs, outputs, name=name)


def save_dense8(directory, seed: int = 0) -> Path:
    path = Path(directory) / "dense8.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_dense8(seed).save(path)
    return path


def build_sequential8(seed: int = 0, name: str = "sequential8"):
    """dense8's layers as a `keras.Sequential` (no `output_names`); input `x` [-1, 8] FP32, output `y` [-1, 1]."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape=(8,), name="x"), keras.layers.Dense(64, activation="relu", name="hidden"),
                             keras.layers.Dense(1, name="y")], name=name)


def save_sequential8(directory, seed: int = 0) -> Path:
    path = Path(directory) / "sequential8.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_sequential8(seed).save(path)
    return path


def export_savedmodel(model, directory) -> Path:
    """Export `model` as a TensorFlow SavedModel folder (as `model.export()` writes it)."""
    path = Path(directory) / f"{model.name}_savedmodel"
    model.export(str(path), verbose=False)
    return path


def build_tabular(seed: int = 0, name: str = "tabular"):
    """One named input per feature, shape [-1, 1] each: age FP32, rooms INT64, city BYTES, garden BOOL.

    Two outputs: `price` FP32 [-1, 1] and `expensive` FP32 [-1, 1] (a sigmoid), so output selection can be tested.
    """
    keras = _keras()
    keras.utils.set_random_seed(seed)
    age = keras.Input(shape=(1,), name="age", dtype="float32")
    rooms = keras.Input(shape=(1,), name="rooms", dtype="int64")
    city = keras.Input(shape=(1,), name="city", dtype="string")
    garden = keras.Input(shape=(1,), name="garden", dtype="bool")
    city_onehot = keras.layers.StringLookup(vocabulary=CITIES, output_mode="one_hot", name="city_lookup")(city)
    joined = keras.layers.Concatenate(name="joined")(
        [age, keras.ops.cast(rooms, "float32"), city_onehot, keras.ops.cast(garden, "float32")]
    )
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(joined)
    price = keras.layers.Dense(1, name="price")(hidden)
    expensive = keras.layers.Dense(1, activation="sigmoid", name="expensive")(hidden)
    return keras.Model(
        {"age": age, "rooms": rooms, "city": city, "garden": garden},
        {"price": price, "expensive": expensive},
        name=name,
    )


def save_tabular(directory, seed: int = 0) -> Path:
    path = Path(directory) / "tabular.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tabular(seed).save(path)
    return path


def tabular_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` rows for the tabular model, as its inputs want them (each [n, 1])."""
    rng = np.random.default_rng(seed)
    return {
        "age": rng.uniform(0, 100, (n, 1)).astype(np.float32),
        "rooms": rng.integers(1, 8, (n, 1)).astype(np.int64),
        "city": rng.choice(np.array(CITIES + ["lisbon"], dtype=object), (n, 1)),
        "garden": rng.integers(0, 2, (n, 1)).astype(bool),
    }


def build_dtype_model(datatype: str, width: int = 4, seed: int = 0):
    """One input `x` of the given V2 datatype, shape [-1, width].

    FP16 and FP64 models compute and answer in that precision (output `y` of the same datatype);
    the others cast to FP32 and answer FP32.
    """
    keras = _keras()
    keras.utils.set_random_seed(seed)
    dtype = DTYPE_MODELS[datatype]
    inputs = keras.Input(shape=(width,), name="x", dtype=dtype)
    if dtype in ("float16", "float64"):
        outputs = keras.layers.Dense(1, name="y", dtype=dtype)(inputs)
    else:
        outputs = keras.layers.Dense(1, name="y")(keras.ops.cast(inputs, "float32"))
    return keras.Model(inputs, outputs, name=f"dtype_{datatype.lower()}")


def save_dtype_model(directory, datatype: str, width: int = 4) -> Path:
    path = Path(directory) / f"dtype_{datatype.lower()}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_dtype_model(datatype, width).save(path)
    return path


def dtype_rows(datatype: str, n: int, width: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = DTYPE_MODELS[datatype]
    if dtype == "bool":
        return rng.integers(0, 2, (n, width)).astype(bool)
    if dtype.startswith("int"):
        return rng.integers(-50, 50, (n, width)).astype(dtype)
    return rng.normal(0, 1, (n, width)).astype(dtype)


def load_keras(path):
    """Load a saved model the way the server does, for computing expected outputs in process."""
    return _keras().saving.load_model(path, safe_mode=True, compile=False)
