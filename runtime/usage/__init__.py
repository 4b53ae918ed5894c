"""What a billing system reads: the usage ledger exported, pushed and summed.

The ledger itself lives in the job store (``JobStore.usage``), written by the completion
step; this package only reads it, so nothing here can bill a job twice or not at all.
"""
