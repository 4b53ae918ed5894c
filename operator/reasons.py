"""Every condition type, condition reason, phase and event reason, in one place.

Reasons are CamelCase words for machines (``kubectl wait``, alerts); messages are sentences
for people. An event reuses the reason of the condition whose transition it reports.
"""

from __future__ import annotations

from typing import Final


class Condition:
    READY: Final = "Ready"
    PROGRESSING: Final = "Progressing"
    DEGRADED: Final = "Degraded"
    WEIGHTS_READY: Final = "WeightsReady"
    UNSCHEDULABLE: Final = "Unschedulable"

    ALL: Final = (READY, PROGRESSING, DEGRADED, WEIGHTS_READY, UNSCHEDULABLE)


class Phase:
    PENDING: Final = "Pending"
    DOWNLOADING_WEIGHTS: Final = "DownloadingWeights"
    LOADING: Final = "Loading"
    READY: Final = "Ready"
    SCALED_TO_ZERO: Final = "ScaledToZero"
    DEGRADED: Final = "Degraded"
    UNSCHEDULABLE: Final = "Unschedulable"
    FAILED: Final = "Failed"


class Reason:
    """Condition reasons."""

    # Ready
    AVAILABLE: Final = "Available"
    SCALED_TO_ZERO: Final = "ScaledToZero"
    LOADING: Final = "Loading"
    PENDING: Final = "Pending"
    WEIGHTS_NOT_READY: Final = "WeightsNotReady"
    INVALID_SPEC: Final = "InvalidSpec"
    # Progressing
    CREATING: Final = "Creating"
    ROLLING_OUT: Final = "RollingOut"
    SCALING: Final = "Scaling"
    ROLLOUT_COMPLETE: Final = "RolloutComplete"
    PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"
    # Degraded
    AS_EXPECTED: Final = "AsExpected"
    POD_FAILING: Final = "PodFailing"
    APPLY_FAILED: Final = "ApplyFailed"
    # WeightsReady
    WEIGHTS_MOUNTED: Final = "WeightsMounted"
    WEIGHTS_CACHED: Final = "WeightsCached"
    DOWNLOADING: Final = "Downloading"
    WEIGHTS_DOWNLOAD_FAILED: Final = "WeightsDownloadFailed"
    # Unschedulable
    UNSCHEDULABLE: Final = "Unschedulable"
    SCHEDULED: Final = "Scheduled"


class EventReason:
    """Event reasons beyond the condition reasons above."""

    CREATED: Final = "Created"
    UPDATED: Final = "Updated"
    SCALED: Final = "Scaled"
    DELETED: Final = "Deleted"
    READY: Final = "Ready"
    NOT_READY: Final = "NotReady"
    RECOVERED: Final = "Recovered"
    WAITING_FOR_WEIGHTS: Final = "WaitingForWeights"
