"""The reconciler: parse, render, adopt, apply, set status, for one ImageModel at a time.

``Reconciler.reconcile`` reads top to bottom like the steps it takes. The model's watch
asks for it (``consider``) when a model is new, has a new generation or new labels, or is
seen for the first time since start; watches on the children ask for it again when a child
is deleted or a weights download ends, and ask for a status refresh (``touch``) when a
child's state moves. Requests are coalesced per model over a short window, so a burst of
pod events becomes one status write, and retried with a delay when they fail.

What the children look like comes from kopf's in-memory indices (``Inventory``); kopf fills
them from its watches before any handler runs, which is why an operator restart computes
exactly the status already stored and writes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import kopf

from tessera.operator import apply, render, status
from tessera.operator.apply import KubeError, Outcome
from tessera.operator.reasons import EventReason
from tessera.operator.spec import ImageModel, InvalidSpec, parse

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, ImageModel name)
T = TypeVar("T")

# Coalesce the events of one burst (a rollout, a node going away) into one status write.
DEBOUNCE_SECONDS = 0.5
RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0
CONCURRENCY = 32
API_THREADS = 32


def _stamp(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile depends on besides the children: the spec (by generation), the
    labels (copied to the children) and the object's identity."""
    meta = body["metadata"]
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return meta.get("uid"), meta.get("generation"), labels


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return meta.get("namespace") or "default", meta["name"]


def revision(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:  # resourceVersions are opaque; etcd's happen to be integers
        return 0


def _fresher(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Whichever copy of one object is newer (None loses)."""
    if a is None or b is None:
        return a or b
    return a if revision(a) >= revision(b) else b


class Inventory:
    """Read access to kopf's indices of ImageModels and their children, by model key.

    kopf passes the indices to handlers as keyword arguments; the operator keeps the
    (live, self-updating) index objects here so that the background loop can read them.
    """

    MODELS = "tessera_models"
    DEPLOYMENTS = "tessera_deployments"
    SERVICES = "tessera_services"
    PODS = "tessera_pods"
    JOBS = "tessera_jobs"
    CLAIMS = "tessera_claims"

    def __init__(self, indices: Mapping[str, Any] | None = None) -> None:
        self._indices: dict[str, Any] = {}
        if indices:
            self.attach(indices)

    def attach(self, indices: Mapping[str, Any]) -> None:
        for name in (
            self.MODELS,
            self.DEPLOYMENTS,
            self.SERVICES,
            self.PODS,
            self.JOBS,
            self.CLAIMS,
        ):
            if name in indices:
                self._indices[name] = indices[name]

    def _values(self, index: str, key: Key) -> list[Mapping[str, Any]]:
        found = self._indices.get(index)
        if found is None:
            return []
        return list(found.get(key, ()))

    def _one(self, index: str, key: Key) -> Mapping[str, Any] | None:
        values = self._values(index, key)
        return max(values, key=revision) if values else None

    def model(self, key: Key) -> Mapping[str, Any] | None:
        return self._one(self.MODELS, key)

    def models(self) -> list[tuple[Key, Mapping[str, Any]]]:
        """Every ImageModel in the index, newest copy of each."""
        found = self._indices.get(self.MODELS)
        if found is None:
            return []
        return [(key, max(values, key=revision)) for key, values in found.items() if values]

    def find(self, key: Key, obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The indexed copy of a child like ``obj`` (same kind and name), if any."""
        index = {
            "Deployment": self.DEPLOYMENTS,
            "Service": self.SERVICES,
            "Job": self.JOBS,
            "PersistentVolumeClaim": self.CLAIMS,
        }.get(obj["kind"])
        if index is None:
            return None
        name = obj["metadata"]["name"]
        return next((v for v in self._values(index, key) if v["metadata"]["name"] == name), None)

    def deployment(self, key: Key) -> Mapping[str, Any] | None:
        return self._one(self.DEPLOYMENTS, key)

    def pods(self, key: Key) -> list[Mapping[str, Any]]:
        return self._values(self.PODS, key)

    def jobs(self, key: Key) -> list[Mapping[str, Any]]:
        return self._values(self.JOBS, key)

    def claim(self, key: Key) -> Mapping[str, Any] | None:
        return self._one(self.CLAIMS, key)


@dataclass
class _Written:
    """What this operator last wrote, until the watch shows it (or something newer)."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    statuses: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def seen(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        ref = (kind, meta.get("namespace", ""), meta.get("name", ""))
        written = self.objects.get(ref)
        if written is not None and revision(body) >= revision(written):
            del self.objects[ref]
        if kind == "ImageModel":
            key = (ref[1], ref[2])
            model = self.statuses.get(key)
            if model is not None and revision(body) >= revision(model):
                del self.statuses[key]


class Reconciler:
    def __init__(
        self,
        kube: apply.Kube,
        config: render.RenderConfig,
        inventory: Inventory | None = None,
        *,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.kube = kube
        self.config = config
        self.inventory = inventory or Inventory()
        self.clock = clock
        self._written = _Written()
        # The last refusal per model, so that status refreshes between retries keep it.
        self._apply_errors: dict[Key, str] = {}
        # What each model looked like when last reconciled (uid, generation, labels), and
        # the generation its children were last rendered from (status.observedGeneration).
        self._reconciled: dict[Key, tuple[Any, ...]] = {}
        self._rendered: dict[Key, int] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._want_reconcile: set[Key] = set()
        self._want_status: set[Key] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)
        # The client blocks; API calls for many models run side by side in these threads.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=API_THREADS, thread_name_prefix="kube"
        )
        self._background: set[asyncio.Task[None]] = set()
        self._running: set[Key] = set()
        # Set once kopf runs handlers, i.e. once every index holds the whole cluster; until
        # then a status computed from the indices could be wrong, so refreshes are ignored
        # (every model is reconciled, status included, when handlers start).
        self.ready = False
        self._failures: dict[Key, int] = {}

    # -- the steps -------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> list[Outcome]:
        """Bring one model's children and status in line with its spec."""
        key = key_of(body)
        async with self._lock(key):
            try:
                model = parse(body)
            except InvalidSpec as error:
                await self._publish_invalid(body, str(error))
                self._reconciled[key] = _stamp(body)  # only an edit can help
                raise
            observed = self.observe(key, model)
            weights = status.check_weights(model, observed)
            desired = render.desired_objects(model, self.config, weights_ready=weights.status)
            kopf.adopt(desired, owner=body)  # type: ignore[arg-type]
            outcomes: list[Outcome] = []
            apply_error = None
            # The children do not depend on each other at the API: apply them side by side.
            results = await asyncio.gather(
                *(self._ensure(key, obj) for obj in desired), return_exceptions=True
            )
            for obj, result in zip(desired, results, strict=True):
                if isinstance(result, Outcome):
                    outcomes.append(result)
                    continue
                if not isinstance(result, KubeError) or not result.invalid:
                    raise result
                kind, name = obj["kind"], obj["metadata"]["name"]
                apply_error = f"the API server refused {kind} {name}: {result.detail}"
            # Degraded turning True (reason ApplyFailed) posts the Warning event, once.
            if apply_error:
                self._apply_errors[key] = apply_error
            else:
                self._apply_errors.pop(key, None)
            await self._delete_stale(body, model)
            await self._announce(body, model, outcomes, weights.status)
            self._rendered[key] = model.generation
            if any(o.wrote for o in outcomes) and not apply_error and self.ready:
                # The Deployment controller answers a write within moments: one status
                # write after the debounce says more than two now.
                self.touch(key)
            else:
                observed = self.observe(key, model, outcomes)
                await self._publish(body, model, observed, generation=model.generation)
            changed = [o for o in outcomes if o.wrote]
            log.info(
                "reconciled %s/%s (generation %d): %s",
                model.namespace,
                model.name,
                model.generation,
                ", ".join(f"{o.action} {o.obj['kind']}" for o in changed) or "unchanged",
            )
            # Done with this generation; a refused child is retried on a timer, not on every
            # status event.
            self._reconciled[key] = _stamp(body)
            if apply_error:
                raise kopf.TemporaryError(apply_error, delay=60)
            return outcomes

    async def sync_status(self, key: Key) -> None:
        """Recompute one model's status from the indices; write it if it changed."""
        async with self._lock(key):
            body = self._model_body(key)
            if body is None:
                return
            rendered_from = self._rendered.get(key) or (body.get("status") or {}).get(
                "observedGeneration"
            )
            if rendered_from is None:
                return  # not reconciled yet: the reconcile writes the first status
            try:
                model = parse(body)
            except InvalidSpec:
                return
            await self._publish(
                body, model, self.observe(key, model), generation=int(rendered_from)
            )

    def observe(
        self, key: Key, model: ImageModel, outcomes: Iterable[Outcome] = ()
    ) -> status.Observed:
        """The children as last seen: the indices, or fresher copies this operator wrote."""
        fresh = {o.obj["kind"]: o.obj for o in outcomes}
        job_name = render.weights_job_name(model)
        jobs = [j for j in self.inventory.jobs(key) if j["metadata"]["name"] == job_name]
        return status.Observed(
            deployment=_fresher(fresh.get("Deployment"), self.inventory.deployment(key)),
            pods=self.inventory.pods(key),
            job=_fresher(fresh.get("Job"), jobs[0] if jobs else None),
            claim=_fresher(fresh.get("PersistentVolumeClaim"), self.inventory.claim(key)),
            apply_error=self._apply_errors.get(key),
        )

    # -- requests from watches ---------------------------------------------------------------

    def consider(self, body: Mapping[str, Any]) -> None:
        """A model event: reconcile if the model is new or changed since its last reconcile."""
        key = key_of(body)
        if self._reconciled.get(key) != _stamp(body):
            self.request(key)

    def touch(self, key: Key) -> None:
        """A child moved: refresh the model's status soon."""
        if not self.ready:
            return
        self._want_status.add(key)
        self._wake.set()

    def request(self, key: Key) -> None:
        """A child went away or a download ended: reconcile the model soon."""
        self._want_reconcile.add(key)
        self._wake.set()

    def seen(self, kind: str, body: Mapping[str, Any]) -> None:
        """A watch delivered ``body``; earlier copies of our own writes are no longer needed."""
        self._written.seen(kind, body)

    def forget(self, key: Key) -> None:
        self._locks.pop(key, None)
        self._want_reconcile.discard(key)
        self._want_status.discard(key)
        self._written.statuses.pop(key, None)
        self._apply_errors.pop(key, None)
        self._reconciled.pop(key, None)
        self._rendered.pop(key, None)
        self._failures.pop(key, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tessera status loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._background:  # reconciles and events in flight
            await asyncio.wait(self._background, timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        calls = getattr(self.kube, "calls", {})
        seconds = getattr(self.kube, "seconds", {})
        log.info(
            "API requests: %s",
            ", ".join(
                f"{k} {n} ({seconds.get(k, 0) / n * 1000:.0f} ms each)"
                for k, n in sorted(calls.items())
            ),
        )

    async def _run(self) -> None:
        """Start the work asked for, one task per model; a slow model holds up no other."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)  # let a burst of events coalesce
            self._wake.clear()
            for key in [k for k in self._want_reconcile if k not in self._running]:
                self._want_reconcile.discard(key)
                self._want_status.discard(key)  # a reconcile writes status too
                self._spawn(key, self._reconcile_key)
            for key in [k for k in self._want_status if k not in self._running]:
                self._want_status.discard(key)
                self._spawn(key, self.sync_status)

    def _spawn(self, key: Key, step: Callable[[Key], Awaitable[Any]]) -> None:
        self._running.add(key)
        task = asyncio.create_task(self._guarded(step, key))
        self._background.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._background.discard(task)
            self._running.discard(key)
            if key in self._want_reconcile or key in self._want_status:
                self._wake.set()  # asked for again while it ran

        task.add_done_callback(done)

    async def _guarded(self, step: Callable[[Key], Awaitable[Any]], key: Key) -> None:
        async with self._limit:
            try:
                await step(key)
            except kopf.PermanentError:
                pass  # reported in status; only an edit helps
            except Exception as error:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                backoff = min(RETRY_SECONDS * 2 ** (failures - 1), MAX_RETRY_SECONDS)
                delay = error.delay if isinstance(error, kopf.TemporaryError) else None
                delay = delay or backoff
                log.warning(
                    "%s of %s/%s failed, retrying in %ss: %s", step.__name__, *key, delay, error
                )
                asyncio.get_running_loop().call_later(delay, self.request, key)
            else:
                self._failures.pop(key, None)

    async def _reconcile_key(self, key: Key) -> None:
        body = self._model_body(key)
        if body is not None:
            await self.reconcile(body)

    # -- helpers ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _model_body(self, key: Key) -> Mapping[str, Any] | None:
        body = self.inventory.model(key)
        written = self._written.statuses.get(key)
        if body is not None and written is not None and revision(written) > revision(body):
            return {**body, "status": written.get("status") or {}}
        return body

    async def _ensure(self, key: Key, desired: dict[str, Any]) -> Outcome:
        """Apply one child unless the copy we hold already matches it.

        The copy is what this operator last wrote, or else what the watch last delivered;
        with neither, the child is new and is applied without a read. A restart therefore
        sends nothing at all for children that match.
        """
        meta = desired["metadata"]
        ref = (desired["kind"], meta["namespace"], meta["name"])
        held = self._written.objects.get(ref) or self.inventory.find(key, desired)
        outcome = await self._call(apply.ensure, self.kube, desired, live=held, absent=held is None)
        if outcome.wrote:
            self._written.objects[ref] = outcome.obj
        return outcome

    async def _delete_stale(self, body: Mapping[str, Any], model: ImageModel) -> None:
        """Loader Jobs of an earlier download, and the cache of a source no longer used."""
        key = key_of(body)
        keep = render.weights_job_name(model)
        for job in self.inventory.jobs(key):
            name = job["metadata"]["name"]
            if name != keep and not job["metadata"].get("deletionTimestamp"):
                await self._call(self.kube.delete, "batch/v1", "Job", model.namespace, name)
                await self.event(
                    body,
                    "Normal",
                    EventReason.DELETED,
                    f"deleted loader Job {name} of earlier weights",
                )
        claim = self.inventory.claim(key)
        if model.spec.weights.hugging_face is None and claim is not None:
            name = claim["metadata"]["name"]
            if not claim["metadata"].get("deletionTimestamp"):
                await self._call(
                    self.kube.delete, "v1", "PersistentVolumeClaim", model.namespace, name
                )
                await self.event(
                    body,
                    "Normal",
                    EventReason.DELETED,
                    f"deleted weights cache claim {name}: the weights come from elsewhere now",
                )

    async def _announce(
        self,
        body: Mapping[str, Any],
        model: ImageModel,
        outcomes: list[Outcome],
        weights_ready: bool,
    ) -> None:
        """An event for every decision the reconcile wrote, saying what and why."""
        created = [o for o in outcomes if o.action == "created"]
        if created:
            what = ", ".join(f"{o.obj['kind']} {o.obj['metadata']['name']}" for o in created)
            await self.event(body, "Normal", EventReason.CREATED, f"created {what}")
            if any(o.obj["kind"] == "Deployment" for o in created) and not weights_ready:
                await self.event(
                    body,
                    "Normal",
                    EventReason.WAITING_FOR_WEIGHTS,
                    f"Deployment {model.name} stays at 0 replicas until the weights are cached",
                )
        for outcome in outcomes:
            if outcome.action != "updated":
                continue
            kind, name = outcome.obj["kind"], outcome.obj["metadata"]["name"]
            fields = sorted({_top(path) for path in outcome.changed})
            if kind == "Deployment" and fields == [".spec.replicas"]:
                replicas = outcome.obj["spec"].get("replicas")
                message = f"scaled Deployment {name} to {replicas} replicas"
                await self.event(body, "Normal", EventReason.SCALED, message)
            else:
                rolls = any(p.startswith(".spec.template") for p in fields)
                message = f"updated {kind} {name}: {', '.join(fields)}"
                message += " (rolling out)" if rolls else ""
                await self.event(body, "Normal", EventReason.UPDATED, message)

    async def _publish(
        self, body: Mapping[str, Any], model: ImageModel, observed: status.Observed, generation: int
    ) -> None:
        previous = body.get("status") or {}
        new = status.compute(model, observed, previous, generation, self.clock())
        await self._write_status(body, previous, new)

    async def _publish_invalid(self, body: Mapping[str, Any], message: str) -> None:
        previous = body.get("status") or {}
        generation = int(body["metadata"].get("generation") or 0)
        new = status.invalid(previous, message, generation, self.clock())
        await self._write_status(body, previous, new)

    async def _write_status(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], new: dict[str, Any]
    ) -> None:
        key = key_of(body)
        written = self._written.statuses.get(key)
        if written is not None and revision(written) > revision(body):
            previous = written.get("status") or {}
        if status.owned(previous) == new:
            return
        log.debug(
            "status %s/%s: %s, %s",
            *key,
            new.get("phase"),
            ", ".join(f"{c['type']}={c['status']} {c['reason']}" for c in new["conditions"]),
        )
        result = await self._call(self.kube.patch_status, body, new)
        self._written.statuses[key] = result
        for notice in status.transitions(previous, new):
            await self.event(body, notice.type, notice.reason, notice.message)

    async def event(
        self, body: Mapping[str, Any], type: Literal["Normal", "Warning"], reason: str, message: str
    ) -> None:
        """Post an Event in the background: an event lost is not worth failing a reconcile."""
        log.info("%s/%s: %s %s: %s", *key_of(body), type, reason, message)
        regarding = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {k: body["metadata"].get(k) for k in ("name", "namespace", "uid")},
        }
        task = asyncio.create_task(self._post_event(regarding, type, reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_event(
        self,
        regarding: Mapping[str, Any],
        type: Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        try:
            await self._call(
                self.kube.post_event, regarding, type=type, reason=reason, message=message
            )
        except KubeError as error:
            log.warning("could not post event %s on %s/%s: %s", reason, *key_of(regarding), error)


def _top(path: str) -> str:
    """``.spec.template.spec.containers[0].env`` -> ``.spec.template``."""
    parts = path.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 else path
