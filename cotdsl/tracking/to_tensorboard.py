"""`--log tensorboard`: event files under RUN_DIR/tb/, one subdirectory per training job
(tb/<condition>/<student>/<data>/seed<k>/) and tb/_summary/ for the summary table; view with
`tensorboard --logdir RUN_DIR/tb`.

Written with tensorboard's own EventFileWriter and protos (what torch's SummaryWriter uses),
without torch or TensorFlow. Scalars are TensorBoard's float32 `simple_value`s; the config and
the summary table are text summaries (markdown). Logging again replaces RUN_DIR/tb/.
"""
from __future__ import annotations

import json
import shutil
import time

from .base import JobLog, RunLog, Tracker

SUMMARY_DIR = "_summary"


def markdown(df) -> str:
    """A polars DataFrame as a markdown table (TensorBoard's text plugin renders it)."""
    def cell(v) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns)
    return head + "".join("\n| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows())


class TensorBoardTracker(Tracker):
    def __init__(self, run: RunLog):
        super().__init__(run)
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.Writer, self.pb = EventFileWriter, (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2)
        self.root = run.run_dir / "tb"
        shutil.rmtree(self.root, ignore_errors=True)

    def _event(self, writer, step: int, values: list) -> None:
        event_pb2, summary_pb2 = self.pb[:2]
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))

    def _scalars(self, writer, step: int, metrics: dict[str, float]) -> None:
        Value = self.pb[1].Summary.Value
        self._event(writer, step, [Value(tag=k, simple_value=float(v)) for k, v in metrics.items()])

    def _text(self, writer, tag: str, text: str) -> None:
        _, summary_pb2, tensor_pb2, shape_pb2 = self.pb
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        shape = shape_pb2.TensorShapeProto(dim=[shape_pb2.TensorShapeProto.Dim(size=1)])
        tensor = tensor_pb2.TensorProto(dtype=7, string_val=[text.encode("utf-8")], tensor_shape=shape)  # 7: DT_STRING
        self._event(writer, 0, [summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])

    def job(self, job: JobLog) -> None:
        t = job.tags  # a folder per name part ("/" in a sweep's string value would nest one more)
        w = self.Writer(str(self.root.joinpath(*(t[k].replace("/", "_") for k in ("condition", "student", "data")),
                                               f"seed{t['seed']}")))
        try:
            self._text(w, "config", "```json\n" + json.dumps(job.config, indent=1, default=str) + "\n```")
            for i, step in enumerate(job.steps):
                self._scalars(w, step, {k: v[i] for k, v in job.series.items()})
            if job.final:  # eval/* and summary/* at the job's last step
                self._scalars(w, job.steps[-1] if job.steps else 0, job.final)
        finally:
            w.close()

    def summary(self) -> None:
        w = self.Writer(str(self.root / SUMMARY_DIR))
        try:
            self._text(w, "summary", markdown(self.run.summary))
        finally:
            w.close()

    def where(self) -> str:
        return f"{self.root} (view: tensorboard --logdir {self.root})"
