"""`helm uninstall`'s pre-delete hook: delete the release's ClusterKopfPeering.

The peering object is cluster-scoped and made by a post-install hook (Helm could not map
its kind before the release's CRDs existed), so Helm never deletes it; this does, with the
hook's own ServiceAccount, which may delete that one object and nothing else.
Environment: TESSERA_PEERING (its name). Run by templates/peering-cleanup.yaml as
`python -c`; an absent object is already what uninstall wants.
"""

import os

from kubernetes import client, config

name = os.environ["TESSERA_PEERING"]
config.load_incluster_config()
try:
    client.CustomObjectsApi().delete_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", name
    )
except client.ApiException as error:
    if error.status != 404:
        raise
    print(f"ClusterKopfPeering {name}: already gone")
else:
    print(f"ClusterKopfPeering {name}: deleted")
