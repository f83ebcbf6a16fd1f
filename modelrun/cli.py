"""The `modelrun` command (design 2.5): run the local stack, deploy, inspect, update, delete, predict.

Thin: each command parses its options, makes one Client call and prints the result (`--json` for
machine-readable output). A modelrun error becomes one line on standard error and exit status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from modelrun import __version__, errors
from modelrun.settings import Settings


class _Group(click.Group):
    """Turns modelrun errors (and a bad environment) into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (errors.NoGoogleCredentials, errors.IdTokenRefused) as exc:  # Google Cloud sign-in
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except errors.Unauthenticated:
            settings = _settings()
            click.echo(f"error: the modelrun API at {settings.api} refused the token — set MODELRUN_TOKEN, or "
                       f"MODELRUN_HOME to the folder `modelrun up` uses (now {settings.home_dir})", err=True)
            sys.exit(1)
        except errors.ModelrunError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"MODELRUN_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise errors.InvalidInput(f"bad environment: {problems}") from None


def _client():
    from modelrun.client import Client

    return Client(settings=_settings())


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _load_config(path: str | None) -> dict | None:
    if path is None:
        return None
    text = Path(path).read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.InvalidInput(f"{path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(value, dict):
        raise errors.InvalidInput(f"{path} must hold a JSON/YAML object (key: value pairs)")
    return value


def _finish(deployment: dict, as_json: bool, verb: str, elapsed: float | None = None) -> None:
    """Print a waited-for deployment; exit 1 when it FAILED, or when an update failed and the previous
    revision keeps serving (the API then says READY with an `error`)."""
    if as_json:
        from modelrun.cli_output import echo_json

        echo_json(deployment)
    name, status = deployment["name"], deployment["status"]
    serving = deployment.get("serving_revision") or deployment.get("revision")
    if status == "FAILED" or (deployment.get("error") and serving != deployment.get("revision")):
        label = "FAILED" if status == "FAILED" else "update failed"
        click.echo(f"error: {name} {label}: {deployment.get('error') or 'no reason given'}", err=True)
        sys.exit(1)
    if not as_json:
        took = f" in {elapsed:.1f}s" if elapsed is not None else ""
        click.echo(f"{name} {verb}{took}: READY at {deployment.get('endpoint')} (revision {serving})")
        if deployment.get("canary"):
            from modelrun.cli_output import canary_line

            click.echo(f"canary: {canary_line(deployment['canary'])}")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelrun")
def cli():
    """Deploy a trained Keras/TensorFlow model as a gRPC endpoint.

    Run `modelrun up` in one terminal, then deploy, predict, update and delete from another. The
    environment picks the target: MODELRUN_API (default http://127.0.0.1:8080), MODELRUN_TOKEN
    (default: the token `modelrun up` wrote in MODELRUN_HOME, default ~/.modelrun). On Google Cloud
    the API and the model servers get ID tokens from Application Default Credentials instead
    (MODELRUN_ID_TOKEN: auto, always or never).
    """


@cli.command()
@click.option("--port", default=8080, show_default=True, help="Port of the REST API on 127.0.0.1.")
@json_option
def up(port: int, as_json: bool):
    """Run the local control plane: REST API, reconciler and bucket watcher, until Ctrl-C."""
    from modelrun.local import run

    sys.exit(run(_settings(), port, as_json=as_json))


@cli.command()
@click.argument("name")
@click.option("--model", "model_uri", required=True, help="A .keras file or SavedModel folder (path, file:// or gs://).")
@click.option("--training-data", "training_data_uri", required=True, help="CSV, JSON or Parquet the model was trained on.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="JSON/YAML config file.")
@click.option("--wait", is_flag=True, help="Block until READY or FAILED, showing progress.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait with --wait.")
@json_option
def deploy(name, model_uri, training_data_uri, config_file, wait, timeout, as_json):
    """Deploy a model as NAME."""
    _submit(name, wait, timeout, as_json, "deployed", lambda client, **kw: client.deploy(
        name, _uri(model_uri), _uri(training_data_uri), _load_config(config_file), **kw))


@cli.command()
@click.argument("name")
@click.option("--model", "model_uri", help="The new model.")
@click.option("--training-data", "training_data_uri", help="The new training data.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="JSON/YAML config file.")
@click.option("--wait", is_flag=True, help="Block until the new revision is READY or FAILED.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait with --wait.")
@json_option
def update(name, model_uri, training_data_uri, config_file, wait, timeout, as_json):
    """Roll out a new revision of NAME; the current one serves until the new one is READY."""
    _submit(name, wait, timeout, as_json, "updated", lambda client, **kw: client.update(
        name, model_uri=_uri(model_uri), training_data_uri=_uri(training_data_uri),
        config=_load_config(config_file), **kw))


def _submit(name, wait, timeout, as_json, verb, call):
    from modelrun.cli_output import Progress, echo_json

    client = _client()
    if not wait:
        deployment = call(client)
        if as_json:
            echo_json(deployment)
        else:
            click.echo(f"{name}: {deployment.get('status')} (revision {deployment.get('revision')}) — "
                       f"follow it with `modelrun get {name}`")
        return
    with Progress(name) as progress:
        deployment = call(client, wait=True, timeout=timeout, on_progress=progress)
    _finish(deployment, as_json, verb, progress.elapsed)


def _uri(value: str | None) -> str | None:
    """Relative local paths are made absolute: the control plane does not share the CLI's directory."""
    if not value or "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise errors.InvalidInput(f"{value}: no such file or folder")
    return str(path.resolve())


@cli.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Block until the canary serves all the traffic.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --wait.")
@json_option
def promote(name, wait, timeout, as_json):
    """Give NAME's canary (an update with config canary_percent) all the traffic."""
    _canary(name, wait, timeout, as_json, "promote")


@cli.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Block until the serving revision has all the traffic again.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --wait.")
@json_option
def rollback(name, wait, timeout, as_json):
    """Drop NAME's canary: the revision serving before it gets all the traffic again."""
    _canary(name, wait, timeout, as_json, "rollback")


def _canary(name, wait, timeout, as_json, action) -> None:
    from modelrun.cli_output import echo_json

    client = _client()
    deployment = getattr(client, action)(name, wait=wait, timeout=timeout)
    if as_json:
        echo_json(deployment)
    elif not wait:
        click.echo(f"{name}: {action} requested (revision {deployment['revision']})")
    elif action == "promote" and deployment.get("serving_revision") == deployment.get("revision"):
        click.echo(f"{name}: revision {deployment['revision']} serves all the traffic at {deployment['endpoint']}")
    elif action == "promote":
        click.echo(f"error: {name}: the canary did not take over: {deployment.get('error')}", err=True)
        sys.exit(1)
    else:
        click.echo(f"{name}: rolled back; revision {deployment['serving_revision']} serves all the traffic")


@cli.command(name="list")
@json_option
def list_(as_json):
    """List deployments."""
    from modelrun.cli_output import deployment_table, echo_json

    deployments = _client().list()
    if as_json:
        echo_json({"deployments": deployments})
    elif not deployments:
        click.echo("no deployments yet — create one with `modelrun deploy NAME --model ... --training-data ...`")
    else:
        deployment_table(deployments)


@cli.command()
@click.argument("name")
@json_option
def get(name, as_json):
    """Show one deployment (exit 1 when there is none)."""
    from modelrun.cli_output import deployment_detail, echo_json

    deployment = _client().get(name)
    echo_json(deployment) if as_json else deployment_detail(deployment)


@cli.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Block until the deployment is gone.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --wait.")
@json_option
def delete(name, wait, timeout, as_json):
    """Delete NAME and stop its model server."""
    from modelrun.cli_output import echo_json

    deployment = _client().delete(name, wait=wait, timeout=timeout)
    if as_json:
        echo_json({"name": name, "deleted": True} if wait else deployment)
    else:
        click.echo(f"{name} deleted" if wait else f"{name}: deleting")


@cli.command()
@click.argument("name")
@click.argument("rows", required=False, metavar="[FILE|-]")
@json_option
def predict(name, rows, as_json):
    """Predict JSON rows (a list of objects keyed by feature) or CSV rows from FILE or standard input.

    Each row needs every feature the model takes; a row without one is an error naming the missing
    feature(s). Other keys or columns (a label, an id) are ignored, so rows cut from the training data
    work as they are. Key order does not matter: a model with one 2-D input gets the features in the
    training data's column order, which the control plane reports (`modelrun get NAME --json`, `features`).

    On a terminal the result is a table: the outputs, then the input columns that fit the width.
    Piped or redirected, it is CSV: the input columns as given, then every output (an output with
    several values per row is one column per value: name[0], name[1], ...), floats in full. --json
    prints one object of outputs per row.
    """
    from modelrun.cli_output import echo_json, read_rows
    from modelrun.cli_predict import print_predictions

    data = read_rows(rows)
    predictions = _client().predict(name, data)
    echo_json(predictions) if as_json else print_predictions(data, predictions)


@cli.command()
@click.argument("name")
@click.option("--window", help='One window: "all" (since the serving revision started), "last-24h" or a UTC day '
                               '(YYYY-MM-DD). Default: every window.')
@json_option
def drift(name, window, as_json):
    """Refresh and print NAME's drift: production traffic against the training data.

    The table lists every feature and model output, most drifted first, with the test, its score and
    threshold, missing rates and flagged checks. Exits 0 whatever the verdict.
    """
    from modelrun.cli_output import echo_json

    result = _client().drift(name, window)
    if as_json:
        echo_json(result)
        return
    from modelrun.cli_drift import print_reports

    print_reports([result] if window else result["windows"])


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="Open it in the default web browser.")
@json_option
def dashboard(open_browser, as_json):
    """Print the drift dashboard's URL (`modelrun up` serves it at /dashboard/ on the API's port; on Google
    Cloud set MODELRUN_DASHBOARD_URL)."""
    from modelrun.cli_output import echo_json

    settings = _settings()
    url = settings.dashboard_url or settings.api.rstrip("/") + "/dashboard/"
    if as_json:
        echo_json({"url": url})
    else:
        click.echo(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)


def main() -> None:
    cli(prog_name="modelrun")


if __name__ == "__main__":
    main()
