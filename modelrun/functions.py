"""Cloud Functions entry points of the control plane: `functions/main.py` re-exports them for Cloud Functions,
and `modelrun up` serves `api` from this file through functions-framework.

Each is a few lines: parse nothing, delegate to the ControlPlane built once per process from Settings().
"""

import functools

import functions_framework

from modelrun.control import build_control_plane
from modelrun.settings import Settings


@functools.cache
def control_plane():
    """The process's ControlPlane, built on first use (so settings come from the environment at that time)."""
    return build_control_plane(Settings())


@functions_framework.http
def api(request):
    return control_plane().handle_api(request)


@functions_framework.cloud_event
def on_upload(cloud_event):
    control_plane().handle_upload(cloud_event)


@functions_framework.cloud_event
def on_build(cloud_event):
    """Cloud Build's `cloud-builds` Pub/Sub topic: a build a revision waits on changed status."""
    control_plane().handle_build_event(cloud_event)


@functions_framework.http
def drift(request):
    return control_plane().handle_drift(request)


@functions_framework.http
def reconcile(request):
    return control_plane().handle_reconcile(request)
