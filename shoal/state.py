"""``shoal.state``: list the cluster's tasks, actors, objects, nodes and workers.

The same functions as ``shoal.core.state`` (see there), at the top level as
Ray has ``ray.util.state``.
"""
from shoal.core.state import (list_actors, list_nodes, list_objects, list_runs, list_tasks,
                              list_workers, report_run, summary, timeline)

__all__ = ["list_actors", "list_nodes", "list_objects", "list_runs", "list_tasks",
           "list_workers", "report_run", "summary", "timeline"]
