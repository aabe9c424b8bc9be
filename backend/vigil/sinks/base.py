"""What the outbox can deliver to: the :class:`Sink` contract and what a delivery returns.

A sink makes one outside system reflect one stored episode: Grafana (annotations,
``annotations.GrafanaSink``) or Alertmanager (alerts, ``alerts.AlertmanagerSink``). The audit
store is not a sink: it is the record the sinks are brought in line with. A delivery must be
idempotent (a retry after a timeout must not make a second annotation or alert); it raises
:class:`vigil.errors.DeliveryError` (or its :class:`~vigil.errors.DeliveryTimeout`) to be retried.

Must not: touch the store itself (fields to keep are returned, or handed to ``remember`` when they
must be committed before the delivery goes on), schedule, or retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Protocol

if TYPE_CHECKING:
    from vigil.store.audit import StoredEpisode
    from vigil.config import JobSettings

__all__ = ["Sink", "Delivered", "Remember"]

#: ``remember(fields, event, detail)``: commit episode ``fields`` now and log ``event`` (for example
#: the id of an annotation just made, before anything else can go wrong).
Remember = Callable[[Mapping[str, Any], str, Mapping[str, Any]], None]


class Delivered(NamedTuple):
    """One delivery done: ``action`` for the log (``created``, ``fired``, ``resolved``...), ``detail``
    for the audit event, and the episode ``fields`` to store with it (``alert_state``...)."""

    action: str
    detail: dict[str, Any]
    fields: Mapping[str, Any] = {}


class Sink(Protocol):
    """One outside system the worker's episodes are delivered to."""

    #: the sink's name in the outbox table (``vigil.audit.SINKS``)
    name: str

    @property
    def request_timeout_s(self) -> float:
        """How long one request to the system may take (the outbox waits longer after a timeout)."""
        ...

    def deliver(self, episode: StoredEpisode, job: JobSettings | None, now_ms: int,
                remember: Remember) -> Delivered:
        """Make the system reflect ``episode`` as stored now; raise DeliveryError to be retried."""
        ...
