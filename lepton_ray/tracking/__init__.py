"""MLflow: where it is (`uris.py`), runs and reads (`tracker.py`), writes that outlive an outage (`write_queue.py`)
and lineage tags (`lineage.py`)."""

from lepton_ray.tracking.tracker import Tracker
from lepton_ray.tracking.uris import check_reachable, redact, tracking_uri

__all__ = ["Tracker", "check_reachable", "redact", "tracking_uri"]
