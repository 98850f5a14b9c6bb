"""Running a visit-detector's pipelines with lsst-pipe-base's executor on the local repository.

``run_pipelines`` tries the pipelines in order. A pipeline whose quantum graph cannot be built (a
calibration missing: a prerequisite not found; or a task left without a quantum: no template
overlaps the detector) falls through to the next, and why is recorded. Once one is executing there
is no fallback (its partial outputs exist): a failed quantum is a ``PipelineFailed`` naming the
pipeline, the task, the data id and the exception. ``NoPipeline`` says why none could be built.

Timings: graph build, each task's quantum (``runQuantum``: its Butler reads and writes and its work),
and the executor's own overhead (execution wall time less the tasks' time).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DatasetRef
from lsst.pipe.base import Pipeline, PipelineTask, TaskFactory
from lsst.pipe.base.separable_pipeline_executor import SeparablePipelineExecutor


class NoPipeline(RuntimeError):
    """None of the visit-detector's pipelines could be built; ``tried`` says why, pipeline by pipeline."""

    def __init__(self, tried: Sequence[tuple[str, str]]) -> None:
        self.tried = list(tried)
        super().__init__("; ".join(f"{name}: {why}" for name, why in tried) or "no pipeline configured")


class PipelineFailed(RuntimeError):
    """A quantum failed once the pipeline was executing: final (no fallback, partial outputs exist)."""

    def __init__(self, pipeline: str, task: str, data_id: str, error: BaseException) -> None:
        self.pipeline, self.task, self.data_id, self.error = pipeline, task, data_id, error
        super().__init__(f"{pipeline}: task {task} failed on {data_id}: {type(error).__name__}: {error}")


@dataclass
class PipelineRun:
    """What ran: the pipeline, the ones that could not be built before it (and why), timings (s), outputs."""

    pipeline: str
    tried: list[tuple[str, str]] = field(default_factory=list)
    graph_s: float = 0.0
    execute_s: float = 0.0
    task_s: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, DatasetRef] = field(default_factory=dict)

    @property
    def middleware_s(self) -> float:
        """Graph build plus the executor's time outside the tasks' own work."""
        return self.graph_s + max(self.execute_s - sum(self.task_s.values()), 0.0)


def pipeline_file(instrument: str, name: str) -> Path:
    """The packaged YAML of pipeline ``name`` for ``instrument`` (FileNotFoundError if there is none)."""
    path = Path(str(resources.files("prompt_processing.pipelines") / "data" / instrument / f"{name}.yaml"))
    if not path.exists():
        raise FileNotFoundError(f"no pipeline {name!r} for {instrument} ({path})")
    return path


def run_pipelines(
    butler: Butler, instrument: str, names: Sequence[str], *, where: str, inputs: Sequence[str], run: str,
    config: Mapping[str, Mapping[str, Any]] = {},
) -> PipelineRun:  # fmt: skip
    """Build and execute the first of ``names`` that can be built, reading ``inputs`` and writing RUN ``run``.

    ``config`` overrides task configs by label (ignored for labels a pipeline lacks). ``butler`` is the
    local repository's writeable Butler.
    """
    tried: list[tuple[str, str]] = []
    factory = TimingTaskFactory()
    executor = SeparablePipelineExecutor(butler.clone(collections=list(inputs), run=run), clobber_output=False,
                                         task_factory=factory)  # fmt: skip
    for name in names:
        pipeline = Pipeline.from_uri(str(pipeline_file(instrument, name)))
        labels = set(pipeline.task_labels)
        for label, fields in config.items():
            for key, value in fields.items():
                if label in labels:
                    pipeline.addConfigOverride(label, key, value)
        start = time.perf_counter()
        try:
            graph = executor.build_quantum_graph(pipeline, where=where)
        except (FileNotFoundError, LookupError) as exc:  # a prerequisite input (a calibration) not found
            tried.append((name, f"cannot build: {_first_line(exc)}"))
            continue
        missing = sorted(label for label in labels if not graph.quanta_by_task.get(label))
        if missing:
            tried.append((name, f"cannot build: no quantum for {', '.join(missing)} (an input is missing)"))
            continue
        done = PipelineRun(name, tried, graph_s=time.perf_counter() - start, task_s=factory.task_s)
        _execute(executor, graph, done)
        for quantum in graph.build_execution_quanta().values():
            for refs in quantum.outputs.values():
                done.outputs.update((ref.datasetType.name, ref) for ref in refs)
        return done
    raise NoPipeline(tried)


def _execute(executor: SeparablePipelineExecutor, graph: Any, done: PipelineRun) -> None:
    start = time.perf_counter()
    try:  # the configs and other init-outputs: one that differs from the RUN's is final (a bug), not an outage
        executor.pre_execute_qgraph(graph, register_dataset_types=True, save_init_outputs=True, save_versions=False)
    except Exception as exc:
        done.execute_s = time.perf_counter() - start
        raise PipelineFailed(done.pipeline, "init-outputs", "the RUN", exc) from exc
    try:
        executor.run_pipeline(graph, fail_fast=True)
    except Exception as exc:
        task, data_id, error = _failed_quantum(exc)
        raise PipelineFailed(done.pipeline, task, data_id, error) from exc
    finally:
        done.execute_s = time.perf_counter() - start


_FAILED_QUANTUM = re.compile(r"\((?P<label>[\w-]+)@(?P<data_id>\{.*?\})\) failed")


def _failed_quantum(exc: BaseException) -> tuple[str, str, BaseException]:
    """(task label, data id, the task's own exception) from the executor's error chain: its message reads
    ``Quantum <id> (<label>@{<data id>}) failed.``, the task's exception is the first cause."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    match = _FAILED_QUANTUM.search(str(exc))
    if match is None:
        return "?", "?", cause
    return match["label"], match["data_id"], cause


class TimingTaskFactory(TaskFactory):
    """Makes the tasks as the executor's default factory does, each ``runQuantum`` timed into ``task_s``
    by label (quanta run one after another in this process)."""

    def __init__(self) -> None:
        self.task_s: dict[str, float] = {}

    def makeTask(self, task_node: Any, butler: Any, initInputRefs: Any) -> PipelineTask:
        task = super().makeTask(task_node, butler, initInputRefs)
        run_quantum, label = task.runQuantum, str(task_node.label)

        def timed(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                run_quantum(*args, **kwargs)
            finally:
                self.task_s[label] = self.task_s.get(label, 0.0) + time.perf_counter() - start

        task.runQuantum = timed  # type: ignore[method-assign]
        return task


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
