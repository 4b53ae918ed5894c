"""Local nodes: Nodes of the test control plane whose pods run as local processes.

KWOK only pretends to run pods. A local node has an agent (``agent.NodeAgent``, one process
per node, started by ``tests/cluster/up --local-nodes K``) that acts as its kubelet: it
runs each container's command with the pod's env, volumes and working directory, reports
phase, container states, restarts and readiness from real probes, and stops the processes
when the pod goes. See tests/cluster/README.md for what runs differently from a kubelet.
"""
