"""Each model's one-thread and wide ONNX Runtime sessions, and the choice between them per run.

ONNX Runtime fixes a session's intra-op threads when the session is created (there is no per-run
setting), so a worker that may run a lone job on several cores keeps two sessions of each model:
the usual one (--threads-per-worker) and a wide twin (--lone-request-threads). The models are
small (det 10 MB, rec 21 MB, cls 0.6 MB), so the twins cost ~35 MB of weights per worker. Before
every model run `ThreadChoice` asks `IdleCores` whether this job is the only one running on the
machine; if so the wide twin runs it, otherwise the narrow session does.

The wide twin does not spin: ONNX Runtime's pool threads busy-wait for more work after each
parallel section by default, which on a machine whose other workers are about to start would take
their cores (measured on this 2-core machine with other load: 2 threads spinning 126 ms median on
the detector, not spinning 76 ms, 1 thread 135 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ocr_svc.idle_cores import IdleCores
from ocr_svc.job import ThreadUse

STAGES = ("det", "cls", "rec")


def wide_twin(session: Any, threads: int) -> Any:
    """A new session of `session`'s model (its file, or the bytes it was built from: the flushed
    and int8 models are) with its options and providers but `threads` intra-op threads that do
    not spin between runs."""
    import onnxruntime

    source = getattr(session, "_model_path", None) or getattr(session, "_model_bytes", None)
    if not source:
        raise ValueError("the session keeps neither its model file nor its bytes; cannot make a twin")
    old = session.get_session_options()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = old.log_severity_level
    options.enable_cpu_mem_arena = old.enable_cpu_mem_arena
    options.graph_optimization_level = old.graph_optimization_level
    options.execution_mode = old.execution_mode
    options.inter_op_num_threads = old.inter_op_num_threads
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = session.get_providers()
    provider_options = session.get_provider_options()
    return onnxruntime.InferenceSession(
        source,
        sess_options=options,
        providers=providers,
        provider_options=[provider_options.get(p, {}) for p in providers],
    )


@dataclass
class ThreadTally:
    """The model runs of the job now running, by the session that ran them."""

    narrow_threads: int
    wide_threads: int
    narrow_runs: int = 0
    wide_runs: int = 0
    forced: bool | None = None  # warm-up: True runs wide, False narrow, None asks IdleCores

    def reset(self) -> None:
        self.narrow_runs = self.wide_runs = 0

    def use(self) -> ThreadUse:
        """What the job's model runs used so far."""
        widest = self.wide_threads if self.wide_runs else self.narrow_threads
        return ThreadUse(widest, self.narrow_runs + self.wide_runs, self.wide_runs)


class ThreadChoice:
    """Stands in for an `InferenceSession` in RapidOCR's `OrtInferSession.session`: runs each call
    on the wide twin when the job is alone on the machine, else on the narrow session. Everything
    else (inputs, outputs, metadata, providers) is the narrow session's."""

    def __init__(
        self, stage: str, narrow: Any, wide: Any | None, cores: IdleCores | None, tally: ThreadTally
    ) -> None:
        self.stage = stage
        self.narrow = narrow
        self.wide = wide
        self._cores = cores
        self._tally = tally

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        forced = self._tally.forced
        wide = self.wide
        if wide is not None and (forced if forced is not None else self._alone()):
            self._tally.wide_runs += 1
            return wide.run(output_names, input_feed, run_options)
        self._tally.narrow_runs += 1
        return self.narrow.run(output_names, input_feed, run_options)

    def _alone(self) -> bool:
        return self._cores is not None and self._cores.may_widen()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.narrow, name)


def install(models: Any, threads: int, cores: IdleCores | None, tally: ThreadTally) -> list[str]:
    """Give each CPU stage of a loaded RapidOCR engine (`Models`) a wide twin of `threads` threads
    chosen per run (no twin, only the tally of runs, when `cores` is None); the stages done."""
    done = []
    for stage in STAGES:
        holder: Any = getattr(getattr(models, stage), "session", None)  # rapidocr's OrtInferSession
        session = getattr(holder, "session", None)
        if session is None or isinstance(session, ThreadChoice):
            continue
        if session.get_providers()[:1] != ["CPUExecutionProvider"]:
            continue
        wide = wide_twin(session, threads) if cores is not None else None
        holder.session = ThreadChoice(stage, session, wide, cores, tally)
        done.append(stage)
    return done
