"""modelrun end to end on one machine: train a model, deploy it, predict, look at it, stop.

    .venv/bin/python examples/demo.py [--keep]      (or: make demo)

1. Trains a small Keras regression model on house prices with numeric features (rooms, area, age) and a
   string feature (city). The dataset is SYNTHETIC, generated here from a known formula plus noise:
   nothing can be downloaded at run time, and a made-up dataset keeps the demo self-contained.
2. Starts `modelrun up` (the local control plane) on a free port with a temporary MODELRUN_HOME.
3. Deploys the model with `modelrun deploy --wait` (progress by stage), sends traffic with
   `modelrun predict`, and shows the deployment with `modelrun get`.
4. Sends more traffic: 300 houses like the training data, then 300 newer, bigger flats (area +50%),
   waits for `modelrun up`'s drift refresh, and prints `modelrun drift` (area drifted, the other features
   not; the predicted price moves with it) and the dashboard's URL.
5. Stops everything it started, also on Ctrl-C or an error; `--keep` leaves the stack running (and the
   temporary folder: model, data, database, bucket, logs) so you can open the dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITIES = ["lisbon", "lyon", "porto", "turin"]
CITY_PREMIUM = {"lisbon": 1.3, "lyon": 1.1, "porto": 0.9, "turin": 1.0}


def say(text: str = "") -> None:
    print(text, flush=True)


def synthetic_houses(n: int, seed: int):
    """A made-up housing market: price (k€) grows with area and rooms, falls with age, depends on city."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rooms = rng.integers(1, 7, n)
    area = np.round(rooms * rng.uniform(18, 32, n) + rng.normal(0, 8, n).clip(-15, 15), 1)
    age = np.round(rng.uniform(0, 90, n), 0)
    city = rng.choice(CITIES, n)
    premium = np.array([CITY_PREMIUM[c] for c in city])
    price = (2.6 * area + 12 * rooms - 0.8 * age + 40) * premium + rng.normal(0, 10, n)
    return pd.DataFrame({"rooms": rooms, "area": area, "age": age, "city": city, "price": np.round(price, 1)})


def train(frame, path: Path) -> None:
    """One named input per feature (the city as a string), normalization and the vocabulary inside the model."""
    warnings.filterwarnings("ignore", module="keras")
    with quiet_stderr(path.with_suffix(".import.log")):  # TensorFlow's start-up chatter goes to a file
        import keras
        import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = {"rooms": keras.Input((1,), name="rooms", dtype="int64"), "area": keras.Input((1,), name="area"),
              "age": keras.Input((1,), name="age"), "city": keras.Input((1,), name="city", dtype="string")}
    numeric = keras.layers.Concatenate()([keras.ops.cast(inputs["rooms"], "float32"), inputs["area"], inputs["age"]])
    norm = keras.layers.Normalization()
    norm.adapt(frame[["rooms", "area", "age"]].to_numpy("float32"))
    city = keras.layers.StringLookup(vocabulary=CITIES, output_mode="one_hot")(inputs["city"])
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([norm(numeric), city]))
    model = keras.Model(inputs, keras.layers.Dense(1, name="price")(hidden), name="houses")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    # String features go through tf.data: Keras' fit() does not take numpy string arrays.
    x = {c: frame[[c]].to_numpy() for c in ("rooms", "area", "age")} | {"city": frame[["city"]].to_numpy().astype(str)}
    data = tf.data.Dataset.from_tensor_slices((x, frame["price"].to_numpy("float32")))
    split = int(len(frame) * 0.8)
    train_set, validation = data.take(split).shuffle(split, seed=0).batch(64), data.skip(split).batch(256)
    history = model.fit(train_set, validation_data=validation, epochs=40, verbose=0)
    say(f"   trained 40 epochs: validation mean absolute error {history.history['val_mae'][-1]:.1f} k€ "
        f"(prices average {frame['price'].mean():.0f} k€)")
    model.save(path)


@contextlib.contextmanager
def quiet_stderr(log: Path):
    """Send file descriptor 2 (where TensorFlow's C++ logging writes) to `log` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, up: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise SystemExit(f"`modelrun up` exited with {up.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"`modelrun up` did not answer on {url} within {timeout:.0f}s; its log: {log}")


def modelrun(env: dict, *args: str, input: str | None = None) -> None:
    """Run a `modelrun` command the way a user would type it, showing its output."""
    say(f"\n$ modelrun {' '.join(args)}")
    result = subprocess.run([sys.executable, "-m", "modelrun", *args], env=env, cwd=REPO, input=input, text=True)
    if result.returncode != 0:
        raise SystemExit(f"`modelrun {args[0]}` failed (exit {result.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave `modelrun up` running and keep its folder, to "
                        "look at the dashboard; stop it later with the command printed at the end")
    keep = parser.parse_args().keep
    work = Path(tempfile.mkdtemp(prefix="modelrun-demo-"))
    up: subprocess.Popen | None = None
    try:
        say("1. Training a Keras model on house prices")
        say("   The dataset is synthetic — generated here (no downloads at run time): 2000 houses with")
        say("   rooms, area (m²), age (years) and city (one of lisbon, lyon, porto, turin); price in k€.")
        frame = synthetic_houses(2000, seed=0)
        frame.to_csv(work / "houses.csv", index=False)
        train(frame, work / "houses.keras")
        (work / "config.json").write_text(json.dumps({"label": "price"}))
        say(f"   saved {work / 'houses.keras'} and its training data {work / 'houses.csv'}")

        port, home = free_port(), work / "home"
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELRUN_")}
        env |= {"MODELRUN_HOME": str(home), "MODELRUN_API": url, "MODELRUN_DRIFT_INTERVAL": "5"}
        say(f"\n2. Starting the local control plane: modelrun up --port {port}   (MODELRUN_HOME={home})")
        log = work / "up.log"
        with open(log, "wb") as out:
            up = subprocess.Popen([sys.executable, "-m", "modelrun", "up", "--port", str(port)], env=env, cwd=REPO,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(url, up, log)
        say("   " + "\n   ".join(line for line in log.read_text().splitlines() if line.startswith("  ")))

        say("\n3. Deploying it through the API (stages: PENDING → BUILDING → DEPLOYING → READY)")
        modelrun(env, "deploy", "houses", "--model", str(work / "houses.keras"), "--training-data",
                 str(work / "houses.csv"), "--config", str(work / "config.json"), "--wait")

        say("\n4. Sending traffic: five new houses as JSON rows, then two as CSV on standard input")
        new = synthetic_houses(7, seed=42)
        (work / "requests.json").write_text(frame_rows(new.head(5)))
        modelrun(env, "predict", "houses", str(work / "requests.json"))
        say("   (the true synthetic prices were: " + ", ".join(f"{p:.0f}" for p in new["price"].head(5)) + ")")
        modelrun(env, "predict", "houses", "-", input=new.tail(2).drop(columns="price").to_csv(index=False))

        say("\n5. The deployment")
        modelrun(env, "get", "houses")
        logged = logged_predictions(home / "modelrun.db", "houses", at_least=2)
        if logged:
            say(f"\n   Every prediction is logged for drift monitoring: {logged[0]} requests, {logged[1]} rows "
                f"in the `predictions` table of {home / 'modelrun.db'}")

        say("\n6. Drift: production traffic against the training data")
        say("   300 more houses like the training data, then 300 newer, bigger flats (area +50%) ...")
        sent = send_traffic(env, url, home, synthetic_houses(300, seed=7))
        shifted = synthetic_houses(300, seed=8)
        shifted["area"] = (shifted["area"] * 1.5).round(1)
        sent += send_traffic(env, url, home, shifted)
        say(f"   sent {sent} rows; `modelrun up` refreshes drift every 5 s here (60 s by default) ...")
        wait_for_drift(home / "dashboard" / "data" / "index.json", "houses", rows=sent + 7)
        modelrun(env, "drift", "houses", "--window", "all")
        say("   area is marked ✖ (drifted); rooms, age and city are not. The model's output, price, moves with")
        say("   area: prediction drift is monitored like a feature.")

        say("\nWhere to look next")
        say(f"  dashboard     {url}/dashboard/  (per-feature histograms, scores, drift over time; no token)")
        say(f"  API           {url}  (OpenAPI: {url}/openapi.yaml; token in {home / 'token'})")
        say(f"  bucket folder {home / 'bucket'}  (a folder with a modelrun.json manifest deploys itself)")
        say(f"  state         {home}  (SQLite database, model bundles, logs)")
        if keep:
            say(f"  still running `modelrun up` (pid {up.pid}); stop it with: kill {up.pid}")
            say(f"                then remove {work} when done. From another shell:")
            say(f"                export MODELRUN_HOME={home} MODELRUN_API={url}")
        else:
            say("                (stopped and removed when the demo ends: run `make demo ARGS=--keep` to look around)")
        say("  commands      .venv/bin/modelrun --help   (up, deploy, list, get, update, promote, rollback, delete,")
        say("                predict, drift, dashboard)")
        say("  yourself      .venv/bin/modelrun up   # then, in another terminal:")
        say("                .venv/bin/modelrun deploy NAME --model FILE.keras --training-data FILE.csv --wait")
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        if up is not None and up.poll() is None and not keep:
            say("\nStopping modelrun up and the model server it started ...")
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        say("done.")


def send_traffic(env: dict, url: str, home: Path, frame, per_request: int = 10) -> int:
    """Predict `frame` in requests of `per_request` rows through the Python client; returns rows sent."""
    from modelrun.client import Client

    rows = json.loads(frame_rows(frame))
    with Client(api=url, token=(home / "token").read_text().strip()) as client:
        for start in range(0, len(rows), per_request):
            client.predict("houses", rows[start:start + per_request])
    return len(rows)


def wait_for_drift(index: Path, name: str, rows: int, timeout: float = 60) -> None:
    """Until the dashboard's index says the drift refresh counted `rows` production rows of `name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = {d["name"]: d for d in json.loads(index.read_text())["deployments"]}
            if found.get(name, {}).get("rows", 0) >= rows:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the drift refresh did not count {rows} rows within {timeout:.0f}s (see {index})")


def logged_predictions(database: Path, name: str, at_least: int, timeout: float = 10) -> tuple[int, int] | None:
    """(requests, rows) the model server logged for `name`, once at least `at_least` requests are in."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while True:
        try:
            with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
                requests, rows = db.execute("SELECT coalesce(sum(part = 0), 0), coalesce(sum(batch_size), 0) "
                                            "FROM predictions WHERE deployment = ?", (name,)).fetchone()
        except sqlite3.Error:
            return None
        if requests >= at_least or time.monotonic() > deadline:
            return requests, rows
        time.sleep(0.3)


def frame_rows(frame) -> str:
    return json.dumps([{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                       for row in frame.drop(columns="price").to_dict("records")], indent=1)


if __name__ == "__main__":
    sys.exit(main())
