"""The control plane: REST API, upload handler and reconciler over pluggable backends (design 2.2, 2.3, 3).

    from modelrun.control import build_control_plane
    plane = build_control_plane(Settings())
    plane.handle_api(flask_request) -> flask.Response
    plane.handle_upload(cloud_event)
    plane.reconcile_once(); plane.wake (threading.Event); plane.shutdown()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelrun.control.plane import ControlPlane
    from modelrun.settings import Settings


def build_control_plane(settings: Settings) -> ControlPlane:
    """Build the control plane for `settings`. Touches no database until first used."""
    from modelrun.control.plane import ControlPlane

    return ControlPlane(settings)
