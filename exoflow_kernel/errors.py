"""Every error ExoFlow raises, one class each.

Errors cross Ray process boundaries (a task's failure is re-raised in the
driver), so each class keeps its constructor arguments in ``args`` and pickles
as itself. Every message says what happened and what to do next.
"""

from __future__ import annotations


class ExoflowError(Exception):
    """Base class: catch this to handle any ExoFlow error."""

    def __init__(self, message: str, **ids: object) -> None:
        super().__init__(message)
        self.message = message
        self.ids = ids
        for key, value in ids.items():
            setattr(self, key, value)

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.ids))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ExoflowError], message: str, ids: dict) -> ExoflowError:
    err = cls.__new__(cls)
    ExoflowError.__init__(err, message, **ids)
    return err


class InvalidOptionError(ExoflowError, ValueError):
    """A task option or API argument has a value we cannot accept."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(
            f"Invalid value {value!r} for {option}: expected {expected}.",
            option=option,
            value=repr(value),
        )


class TaskArgumentsError(ExoflowError, TypeError):
    """``task.bind(...)`` was given arguments the task's function cannot take."""

    def __init__(self, task: str, reason: str, signature: str) -> None:
        super().__init__(
            f"{task}() cannot take these arguments ({reason}). Its signature is {task}{signature}: "
            f"pass matching arguments to {task}.bind(...).",
            task=task,
            reason=reason,
        )


class CycleError(ExoflowError, ValueError):
    """The task graph has a cycle, so no order can run it."""

    def __init__(self, cycle: list[str]) -> None:
        path = " -> ".join(cycle + cycle[:1])
        super().__init__(
            f"The workflow graph has a cycle: {path}. "
            "Remove one of these dependencies so the tasks can run in order.",
            cycle=list(cycle),
        )


class WorkflowNotFoundError(ExoflowError, KeyError):
    """No workflow with this id exists in the store."""

    def __init__(self, workflow_id: str, store: str) -> None:
        super().__init__(
            f"No workflow {workflow_id!r} in the store at {store}. "
            "Check the id with exo.list_workflows() (or `exoflow list`), "
            "or point to the right store with exo.init(store=...) / --store.",
            workflow_id=workflow_id,
            store=store,
        )


class TaskNotFoundError(ExoflowError, KeyError):
    """The workflow has no task with this id."""

    def __init__(self, workflow_id: str, task_id: str, known: list[str]) -> None:
        shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
        super().__init__(
            f"Workflow {workflow_id!r} has no task {task_id!r}. Its tasks are: {shown}. "
            "Pass one of these ids (or a task's name) as task=.",
            workflow_id=workflow_id,
            task_id=task_id,
        )


class WorkflowExistsError(ExoflowError):
    """A workflow id was reused for a different graph."""

    def __init__(self, workflow_id: str, reason: str) -> None:
        super().__init__(
            f"Workflow {workflow_id!r} already exists with a different graph ({reason}). "
            "Use a new workflow_id, or exo.delete() the old one first.",
            workflow_id=workflow_id,
        )


class WorkflowFailedError(ExoflowError):
    """A task failed after all its attempts; the workflow is FAILED."""

    def __init__(self, workflow_id: str, task_id: str, cause: str) -> None:
        super().__init__(
            f"Workflow {workflow_id!r} failed in task {task_id!r}: {cause}. "
            f"Fix the cause, then exo.resume({workflow_id!r}) re-runs only what did not commit.",
            workflow_id=workflow_id,
            task_id=task_id,
            cause=cause,
        )


class WorkflowCanceledError(ExoflowError):
    """The workflow was canceled while it ran or before it was resumed."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"Workflow {workflow_id!r} was canceled. "
            f"exo.resume({workflow_id!r}) continues it; exo.delete({workflow_id!r}) removes it.",
            workflow_id=workflow_id,
        )


class WorkflowNotFinishedError(ExoflowError):
    """An output was asked for before the task committed it."""

    def __init__(self, workflow_id: str, task_id: str, state: str) -> None:
        super().__init__(
            f"Task {task_id!r} of workflow {workflow_id!r} has no committed output yet "
            f"(state: {state}). Run or resume the workflow first: exo.resume({workflow_id!r}).",
            workflow_id=workflow_id,
            task_id=task_id,
            state=state,
        )


class WorkflowLiveError(ExoflowError):
    """Another live owner holds the workflow (or the whole store)."""

    def __init__(self, workflow_id: str | None, owner: str, store: str) -> None:
        what = f"Workflow {workflow_id!r}" if workflow_id else f"The store at {store}"
        super().__init__(
            f"{what} is owned by a live process ({owner}). Only one owner may run it at a time: "
            "wait for it to finish, cancel it there, or stop that process; "
            "a lease whose owner died is taken over automatically.",
            workflow_id=workflow_id,
            owner=owner,
            store=store,
        )


class UnpicklableOutputError(ExoflowError, TypeError):
    """A task returned a value that cannot be checkpointed."""

    def __init__(self, workflow_id: str, task_id: str, cause: str) -> None:
        super().__init__(
            f"Task {task_id!r} of workflow {workflow_id!r} returned a value that cannot be "
            f"pickled for its checkpoint ({cause}). Return plain data (numbers, arrays, "
            "DataFrames, dicts) instead of open files, locks or connections, "
            "or set checkpoint=False on this task if its output need not be durable.",
            workflow_id=workflow_id,
            task_id=task_id,
            cause=cause,
        )


class CheckpointCorruptedError(ExoflowError):
    """A checkpoint is missing or damaged and the task cannot be re-run safely."""

    def __init__(self, workflow_id: str, task_id: str, location: str, reason: str,
                 why: str = "the task is nondeterministic, so re-running it could silently change results") -> None:
        super().__init__(
            f"The checkpoint of task {task_id!r} in workflow {workflow_id!r} at {location} is "
            f"unusable ({reason}), and {why}. Restore the file from a backup, or exo.delete() the "
            "workflow and run it again.",
            workflow_id=workflow_id,
            task_id=task_id,
            location=location,
            reason=reason,
        )


class StoreError(ExoflowError, OSError):
    """The store directory cannot be used (unwritable, not a store, damaged)."""

    def __init__(self, store: str, reason: str,
                 advice: str = "Pick a writable directory with exo.init(store=...) or $EXOFLOW_STORE.") -> None:
        super().__init__(
            f"Cannot use the ExoFlow store at {store}: {reason}. {advice}".rstrip(),
            store=store,
            reason=reason,
        )


class EventError(ExoflowError, ValueError):
    """An event name or payload cannot be used."""

    def __init__(self, workflow_id: str, name: str, reason: str,
                 advice: str = "Send plain data (numbers, strings, lists, dicts, arrays) as the payload.") -> None:
        super().__init__(
            f"Cannot send event {name!r} to workflow {workflow_id!r}: {reason}. {advice}",
            workflow_id=workflow_id,
            name=name,
        )


class NotInTaskError(ExoflowError, RuntimeError):
    """exo.context() was called outside a running task."""

    def __init__(self) -> None:
        super().__init__(
            "exo.context() is only available inside a running task. "
            "Call it from a function decorated with @exo.task while a workflow runs."
        )


class WriteNotAllowedError(ExoflowError, RuntimeError):
    """ctx.write was called in a task that is not a transactional effect."""

    def __init__(self, task_id: str, table: str) -> None:
        super().__init__(
            f"Task {task_id!r} called ctx.write({table!r}, ...) but is not declared "
            "effect='transactional'. Add effect='transactional' to its @exo.task options "
            "so the rows are committed exactly once with the task.",
            task_id=task_id,
            table=table,
        )


class QueryError(ExoflowError, ValueError):
    """exo.sql was given a statement it will not run."""

    def __init__(self, sql: str, reason: str) -> None:
        super().__init__(f"Cannot run {sql[:80]!r}: {reason}.", sql=sql)


class UnpicklableWorkflowError(ExoflowError, TypeError):
    """The graph itself cannot be stored, so a fresh process could not resume it."""

    def __init__(self, workflow_id: str, cause: str) -> None:
        super().__init__(
            f"Workflow {workflow_id!r} cannot be stored for resume: its tasks or arguments do not "
            f"pickle ({cause}). Pass plain data as arguments and define tasks at module level "
            "or in the notebook, not inside objects holding locks, sockets or open files.",
            workflow_id=workflow_id,
            cause=cause,
        )


class CliError(ExoflowError):
    """A command-line failure outside the engine (graphviz missing, output not writable)."""


class ActorLostError(ExoflowError, RuntimeError):
    """A task's output held a Ray actor that died, and the task cannot be run again to remake it."""

    def __init__(self, workflow_id: str, task_id: str, producer: str, actor_id: str, reason: str) -> None:
        super().__init__(
            f"Task {task_id!r} of workflow {workflow_id!r} used Ray actor {actor_id} from the output of task "
            f"{producer!r}, and that actor died. An actor is a live process: its state cannot be checkpointed, "
            f"so the engine remakes it by running {producer!r} again, but {reason}. "
            f"Return plain data rather than actor handles from tasks whose output must survive, "
            f"then exo.resume({workflow_id!r}).",
            workflow_id=workflow_id,
            task_id=task_id,
            producer=producer,
            actor_id=actor_id,
        )
