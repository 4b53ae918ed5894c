"""The Tessera operator: ImageModel resources become GPU worker Deployments.

Modules, in the order a reconcile uses them:

- ``spec``: the resource as typed models (``parse``; ``InvalidSpec`` on a bad spec);
- ``render``: pure functions from a model to the Deployment, Service, weights claim and Job;
- ``apply``: compare-then-apply against the API server, status patches, events;
- ``status``: conditions and phase as a pure function of what was observed;
- ``reconcile``: the steps in order, plus the coalescing loop behind the watches;
- ``handlers``: the kopf handlers; ``cli``: ``tessera operator``.
"""
