"""The file Cloud Functions loads (its source folder holds this file and the `modelrun` package).

The entry points live in `modelrun.functions`, so an installed modelrun (`modelrun up`) has them too.
"""

from modelrun.functions import api, control_plane, drift, on_build, on_upload, reconcile

__all__ = ["api", "control_plane", "drift", "on_build", "on_upload", "reconcile"]
