"""Serving beyond one process: N engine replicas behind Ray Serve, adapters routed by affinity.

Only ``ray_serve``, ``replica``, ``ingress`` and ``router`` import Ray (the ``loraserve[ray]``
extra); the policy (``affinity``), the shared folder (``registry``) and the metrics merge
(``replica_metrics``) are plain Python, so the routing simulation and the unit tests run the
same code without a cluster.
"""
