"""The sequence record: its fields, its state-named querysets, its progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connections, models, router
from django.db.models import BooleanField, Case, ExpressionWrapper, Q, When
from django.db.models import DateTimeField as DateTimeOutput
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from sequence.declare.exceptions import InvalidData, UnknownSequence
from sequence.engine.states import ACTIVE, TERMINAL, Status

NOT_MIGRATED = "The sequence tables do not exist yet: run `python manage.py migrate`."


def not_migrated(error: BaseException) -> bool:
    """Whether ``error`` came from the sequence tables being missing (``migrate`` not run).

    Asked only after a database error, at the entry points (the command, the admin), so
    that a first run before ``migrate`` says so in one line instead of a traceback.
    """
    if not isinstance(error, DatabaseError):
        return False
    connection = connections[router.db_for_read(SequenceRecord)]
    try:
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
    except DatabaseError:
        return False
    return SequenceRecord._meta.db_table not in tables


# Not finished: the rows that hold a place under a Concurrency key, or wait for one.
# One condition, spelled once, for the partial index and the queries it serves.
LIVE = ~Q(status__in=sorted(TERMINAL))

# Where a compensation walk is: a plan index, and in a ForEach the element's position.
Position = tuple[int, int | None]


def ago(seconds: float) -> ExpressionWrapper[Any]:
    """The database's clock, ``seconds`` ago."""
    return ExpressionWrapper(Now() - timedelta(seconds=seconds), output_field=DateTimeOutput())


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps; prints as ``2/3``."""

    done: int
    total: int
    # In a running ForEach: (elements done, elements in all).
    items: tuple[int, int] | None = None

    @property
    def percent(self) -> int:
        if self.total == 0:
            return 100
        part = self.items[0] / self.items[1] if self.items and self.items[1] else 0
        return int((self.done + part) * 100 // self.total)

    def __str__(self) -> str:
        items = f" ({self.items[0]}/{self.items[1]} elements)" if self.items else ""
        return f"{self.done}/{self.total}{items}"

    def __repr__(self) -> str:
        items = f", items={self.items!r}" if self.items else ""
        return f"Progress(done={self.done}, total={self.total}{items})"


# The verbs that act on many rows (``pause``, ``resume``, ``cancel``) and a row's handle
# belong to sequence.engine.steering, which imports this module: it puts them here when it is
# imported (the app's ready() imports it), so that the records import no layer above.
VERBS: dict[str, Callable[..., Any]] = {}


def _verb(name: str) -> Callable[..., Any]:
    try:
        return VERBS[name]
    except KeyError:
        raise RuntimeError(
            f"SequenceRecord.{name}() needs the sequence app loaded; is 'sequence' in "
            "INSTALLED_APPS and django.setup() done?"
        ) from None


def subject_of(obj: models.Model) -> tuple[ContentType, str]:
    """The content type and the primary key (as text) of a saved model instance."""
    if not isinstance(obj, models.Model):
        raise InvalidData(
            f"subject must be a saved model instance (an order, a user), not "
            f"{type(obj).__name__} {obj!r:.80}."
        )
    if obj.pk is None:
        raise InvalidData(
            f"subject {type(obj).__name__} {obj!r:.80} is not saved (its pk is None); save "
            "it before starting a sequence about it."
        )
    return ContentType.objects.get_for_model(obj), str(obj.pk)


class SequenceQuerySet(models.QuerySet["SequenceRecord"]):
    def find(self, pk: int | str) -> SequenceRecord:
        """The sequence with this id; UnknownSequence if there is none."""
        try:
            return self.get(pk=pk)
        except (self.model.DoesNotExist, ValueError, TypeError):
            raise UnknownSequence(f"No sequence has the id {pk!r}.") from None

    def with_overdue(self, grace: float) -> SequenceQuerySet:
        """Annotate ``overdue``: the row's outbox entry is older than ``grace`` seconds."""
        return self.annotate(
            overdue=Case(
                When(dispatch_due__lt=ago(grace), then=True),
                default=False,
                output_field=BooleanField(),
            )
        )

    def active(self) -> SequenceQuerySet:
        """Sequences that should be moving: pending, running or retrying."""
        return self.filter(status__in=ACTIVE)

    def finished(self) -> SequenceQuerySet:
        """Sequences in a terminal status."""
        return self.filter(status__in=TERMINAL)

    def pending(self) -> SequenceQuerySet:
        return self.filter(status=Status.PENDING)

    def running(self) -> SequenceQuerySet:
        return self.filter(status=Status.RUNNING)

    def retrying(self) -> SequenceQuerySet:
        return self.filter(status=Status.RETRYING)

    def paused(self) -> SequenceQuerySet:
        return self.filter(status=Status.PAUSED)

    def completed(self) -> SequenceQuerySet:
        return self.filter(status=Status.COMPLETED)

    def failed(self) -> SequenceQuerySet:
        return self.filter(status=Status.FAILED)

    def canceled(self) -> SequenceQuerySet:
        return self.filter(status=Status.CANCELED)

    def queued(self) -> SequenceQuerySet:
        """Sequences waiting for a place under their class's ``Concurrency``."""
        return self.filter(status=Status.QUEUED)

    def compensating(self) -> SequenceQuerySet:
        return self.filter(status=Status.COMPENSATING)

    def sleeping(self) -> SequenceQuerySet:
        return self.filter(status=Status.SLEEPING)

    def waiting(self) -> SequenceQuerySet:
        return self.filter(status=Status.WAITING)

    def for_subject(self, obj: models.Model) -> SequenceQuerySet:
        """Sequences started with ``subject=obj``, newest first (one indexed lookup)."""
        content_type, object_id = subject_of(obj)
        return self.filter(subject_type=content_type, subject_id=object_id).order_by("-id")

    # -- steering many at once: one conditional UPDATE each (sequence.engine.transitions.bulk) --

    def pause(self) -> int:
        """Pause every row here that pause applies to; the number paused.

        Rows in other statuses are left as they are and not counted. ``sequence_paused``
        is sent for each paused row once the change commits.
        """
        count: int = _verb("pause")(self)
        return count

    def resume(self) -> int:
        """Resume every paused row here; the number resumed.

        Each one's next step is queued once the change commits (a row whose step is
        still in flight goes back to running instead), and ``sequence_resumed`` is sent.
        """
        count: int = _verb("resume")(self)
        return count

    def cancel(self) -> int:
        """Cancel every row here that cancel applies to; the number canceled.

        Their queued jobs are deleted from Redis and ``sequence_canceled`` is sent for
        each, once the change commits.
        """
        count: int = _verb("cancel")(self)
        return count


class SequenceRecord(models.Model):
    """One started sequence: its data, where it is, and who may move it."""

    name = models.CharField(_("name"), max_length=200)
    # NULL, not "": many sequences have no key, and the unique constraint skips NULLs.
    key = models.CharField(_("start key"), max_length=255, null=True, blank=True)  # noqa: DJ001
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    data = models.JSONField(_("data"), default=dict)
    plan = models.JSONField(_("plan"), default=list, help_text=_("Step names, in order."))
    version = models.CharField(_("version"), max_length=64, blank=True)
    queue = models.CharField(_("queue"), max_length=100)
    step_index = models.PositiveIntegerField(_("next step"), default=0)
    # Fencing: goes up on every dispatch; a job carries the epoch it was queued under.
    epoch = models.PositiveBigIntegerField(_("epoch"), default=0)
    attempt = models.PositiveIntegerField(_("attempts of the current step"), default=0)
    recoveries = models.PositiveIntegerField(_("recoveries of the current step"), default=0)
    # The claim: who runs the current step, and until when (database clock).
    claim_token = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    claimed_by = models.CharField(max_length=200, blank=True)
    # When the claim was taken (database clock): the step's deadline counts from here.
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # The outbox: set in the commit that makes a dispatch due, cleared once it is queued.
    dispatch_due = models.DateTimeField(null=True, blank=True)
    # The compensation walk: the plan index being compensated (NULL: none ran since the
    # last retry; -1: the walk is over), and the status the sequence ends in after it.
    undo_index = models.IntegerField(_("compensating step"), null=True, blank=True)
    ends_as = models.CharField(_("ends as"), max_length=16, blank=True)
    # Sleeping: when the Sleep ends. Waiting: when the WaitFor times out (NULL: never),
    # and the event it waits for. The database is the truth: waking is a query for
    # what is due (sequence.engine.waiting), never a timer held in Redis.
    wake_at = models.DateTimeField(_("wakes at"), null=True, blank=True)
    waiting_for = models.CharField(_("waiting for"), max_length=200, blank=True)
    # A ForEach in flight: its elements, and how many succeeded and failed for good
    # (each element's commit counts itself here, and the one that counts the last moves
    # the sequence on). While its compensations walk back through a ForEach, undo_item
    # is the element being compensated.
    items_total = models.PositiveIntegerField(_("elements"), null=True, blank=True)
    items_done = models.PositiveIntegerField(_("elements done"), default=0)
    items_failed = models.PositiveIntegerField(_("elements failed"), default=0)
    undo_item = models.IntegerField(_("compensating element"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    # Under the class's Concurrency: the value of its key (NULL: no Concurrency), and
    # whether the sequence took a place (a queued one has none until it is admitted;
    # one paused before it had a place waits for one again when resumed).
    flow_key = models.CharField(_("concurrency key"), max_length=255, null=True, blank=True)  # noqa: DJ001
    has_place = models.BooleanField(_("holds a place"), default=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    # What the sequence is about (start(subject=obj)): any saved model instance. The id
    # is text so that any primary key type fits; deleting the subject keeps the sequence.
    subject_type = models.ForeignKey(
        ContentType,
        verbose_name=_("subject type"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    subject_id = models.CharField(_("subject id"), max_length=255, blank=True, default="")
    # The trace start() ran in, as a W3C traceparent ("" without OpenTelemetry): each
    # attempt's span joins it, on whichever worker runs it (sequence.engine.tracing).
    traceparent = models.CharField(_("trace"), max_length=55, blank=True, default="")
    subject = GenericForeignKey("subject_type", "subject_id")

    objects = SequenceQuerySet.as_manager()

    class Meta:
        db_table = "sequence_record"
        verbose_name = _("sequence")
        verbose_name_plural = _("sequences")
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "key"], condition=Q(key__isnull=False), name="sequence_unique_key"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-id"], name="sequence_status_idx"),
            models.Index(fields=["name", "-id"], name="sequence_name_idx"),
            # The sweep reads outbox entries and claims in batches by id: indexed by id
            # over just those rows, so the batches never walk the whole table (the
            # planners would rather scan the primary key in id order than sort).
            models.Index(
                fields=["id"], condition=Q(dispatch_due__isnull=False), name="sequence_outbox_idx"
            ),
            models.Index(
                fields=["id"], condition=Q(lease_until__isnull=False), name="sequence_lease_idx"
            ),
            # Waking reads only what is due: sleepers and waits with a deadline.
            models.Index(
                fields=["wake_at"], condition=Q(wake_at__isnull=False), name="sequence_wake_idx"
            ),
            # Who holds a place, and who waits for one, under a Concurrency key: only
            # the live rows, however many finished ones each key has.
            models.Index(
                fields=["name", "flow_key", "id"],
                condition=Q(flow_key__isnull=False) & LIVE,
                name="sequence_flow_idx",
            ),
            # The admin's search by start key, across names.
            models.Index(fields=["key"], condition=Q(key__isnull=False), name="sequence_key_idx"),
            # for_subject(): a subject's sequences, newest first.
            models.Index(
                fields=["subject_type", "subject_id", "-id"],
                condition=Q(subject_type__isnull=False),
                name="sequence_subject_idx",
            ),
            # Retention: `sequence prune` deletes finished sequences oldest first.
            models.Index(
                fields=["finished_at"],
                condition=Q(finished_at__isnull=False),
                name="sequence_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"

    def step_label(self, index: int | None = None) -> str:
        """``shop.Checkout #7 step Charge (attempt 2)``: how log lines name a step."""
        index = self.step_index if index is None else index
        step = self.plan[index] if 0 <= index < len(self.plan) else f"{index + 1}"
        return f"{self.name} #{self.pk} step {step} (attempt {self.attempt})"

    def handle(self) -> Any:
        """The ``Sequence`` instance (of the row's registered class) showing this row."""
        return _verb("handle")(self)

    @property
    def total_steps(self) -> int:
        return len(self.plan)

    @property
    def in_wait(self) -> bool:
        """In its Sleep or WaitFor (sleeping, waiting, or paused there): the row is already
        past the item, which is still where the sequence is, and not done."""
        if self.step_index < 1:
            return False
        if self.status in (Status.SLEEPING, Status.WAITING):
            return True
        return self.status == Status.PAUSED and (self.wake_at is not None or bool(self.waiting_for))

    @property
    def steps_done(self) -> int:
        if self.status == Status.COMPLETED:
            return len(self.plan)
        return self.step_index - 1 if self.in_wait else self.step_index

    @property
    def progress(self) -> Progress:
        items = None
        if self.items_total is not None and self.status not in TERMINAL:
            items = (self.items_done, self.items_total)
        return Progress(self.steps_done, self.total_steps, items)

    @property
    def compensated(self) -> bool:
        """Whether compensations ran (or are running) since the last retry."""
        return self.undo_index is not None

    @property
    def current_step(self) -> str | None:
        """The step running or next to run; None once completed."""
        index = self.step_index - 1 if self.in_wait else self.step_index
        if self.status == Status.COMPLETED or index >= len(self.plan):
            return None
        step: str = self.plan[index]
        return step
