"""Inference servers' own Prometheus counters as work measures, and a serving process's energy
split over them per window (pure: no I/O; the daemon's ``daemon/scraping.py`` does the fetching).

A vLLM, TGI or Triton server already counts, per model, the tokens it read and wrote and the
requests it finished. Each window (between two scrapes) the counters' deltas say what work the
server did, and the energy the daemon attributed to the server's process in that window is split
over the models by that work: a vLLM node gets joules per token per model with no code change.

The metric names and labels are the servers' own, looked up in their sources (not remembered):

- vLLM, ``vllm/v1/metrics/loggers.py`` (PrometheusStatLogger; v0's ``vllm/engine/metrics.py``
  uses the same names): counters ``vllm:prompt_tokens`` and ``vllm:generation_tokens`` (exposed
  with the ``_total`` suffix by prometheus_client), ``vllm:request_success`` (extra label
  ``finished_reason``), histogram ``vllm:e2e_request_latency_seconds``; labels ``model_name`` and
  ``engine`` (one series per engine under data parallelism: summed here).
- Text Generation Inference, ``router/src/server.rs`` and ``router/src/validation.rs``: histograms
  ``tgi_request_input_length`` (input tokens per request, recorded at validation),
  ``tgi_request_generated_tokens`` and ``tgi_request_duration`` (seconds), counter
  ``tgi_request_success``; no model label (one model per server: the target's name stands in).
  Exposed by metrics-exporter-prometheus, counters without a ``_total`` suffix.
- Triton, ``docs/user_guide/metrics.md``: counters ``nv_inference_request_success``,
  ``nv_inference_request_duration_us`` and ``nv_inference_compute_infer_duration_us``
  (cumulative microseconds), labels ``model`` and ``version`` (versions summed). Triton counts no
  tokens; its models' energy is split by their compute time.

Counter semantics follow Prometheus's ``increase()``: the first scrape is a baseline; a value below
the previous one is a reset (the server restarted) and counts from zero; a series that appears
after the baseline started from zero in that window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.model import J_PER_KWH
from carbonwatch.pricing import co2e_g
from carbonwatch.sampler import AttributedInterval

MAX_MODELS = 64  # per server: more model labels than this is not a serving process we understand
MAX_MODEL_LEN = 256  # as the API's model names
# Energy pieces kept after the last scrape: past this (scrapes failing for a long while) the older
# ones are merged into one, evenly spread: memory stays bounded, joules are all kept.
MAX_TAIL_PIECES = 1024

COUNTER, HIST_SUM = "counter", "sum"
FIELDS = ("tokens_in", "tokens_out", "requests", "busy_s", "work")


class ExpositionError(ValueError):
    """Text that is not Prometheus exposition, or holds no counters of a known server."""


@dataclass(frozen=True)
class Source:
    family: str  # the metric family's name, as prometheus_client's parser names it
    kind: str  # COUNTER: the counter's value; HIST_SUM: the histogram's _sum
    scale: float = 1.0  # to our unit (Triton's microseconds to seconds)

    def names(self) -> tuple[str, ...]:
        """Family names it may come under: an exposition without ``# TYPE`` lines leaves a
        counter's samples in an untyped family named with its ``_total`` suffix."""
        return (self.family, self.family + "_total") if self.kind == COUNTER else (self.family,)


@dataclass(frozen=True)
class ServerFormat:
    name: str
    model_label: str | None  # None: one model per server (the target's name)
    sources: Mapping[str, Source]  # FIELDS -> where it is read

    def present(self, families: Mapping[str, object]) -> bool:
        return any(name in families for s in self.sources.values() for name in s.names())


FORMATS = (
    ServerFormat("vllm", "model_name", {
        "tokens_in": Source("vllm:prompt_tokens", COUNTER),
        "tokens_out": Source("vllm:generation_tokens", COUNTER),
        "requests": Source("vllm:request_success", COUNTER),
        "busy_s": Source("vllm:e2e_request_latency_seconds", HIST_SUM),
    }),
    ServerFormat("tgi", None, {
        "tokens_in": Source("tgi_request_input_length", HIST_SUM),
        "tokens_out": Source("tgi_request_generated_tokens", HIST_SUM),
        "requests": Source("tgi_request_success", COUNTER),
        "busy_s": Source("tgi_request_duration", HIST_SUM),
    }),
    ServerFormat("triton", "model", {
        "requests": Source("nv_inference_request_success", COUNTER),
        "busy_s": Source("nv_inference_request_duration_us", COUNTER, 1e-6),
        "work": Source("nv_inference_compute_infer_duration_us", COUNTER, 1e-6),
    }),
)


def counts_tokens(server: str) -> bool:
    """Whether a server format counts output tokens for every request it serves (vLLM, TGI):
    then all of its windows' energy is token work, as per-token figures read it."""
    return any(f.name == server and "tokens_out" in f.sources for f in FORMATS)


@dataclass(frozen=True)
class Reading:
    """One scrape: the server format recognised and each model's cumulative counters."""

    server: str
    models: dict[str, dict[str, float]]


def parse_exposition(text: str, default_model: str) -> Reading:
    """Parse Prometheus text exposition (prometheus_client's parser) into per-model counters.

    ``default_model`` names the model of servers whose metrics carry no model label (TGI).
    Raises ExpositionError for text the parser refuses, for no known server's counters, for
    negative or non-finite values, and for more than MAX_MODELS models."""
    try:
        families = {f.name: f for f in text_string_to_metric_families(text)}
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise ExpositionError(f"not Prometheus text exposition: {exc}") from None
    fmt = next((f for f in FORMATS if f.present(families)), None)
    if fmt is None:
        raise ExpositionError(
            "no vLLM, TGI or Triton counters in the exposition (looked for "
            + ", ".join(f.sources[next(iter(f.sources))].family for f in FORMATS) + ")"
        )
    models: dict[str, dict[str, float]] = {}
    for name, src in fmt.sources.items():
        wanted = ({src.family, src.family + "_total"} if src.kind == COUNTER
                  else {src.family + "_sum"})
        samples = [s for name in src.names() if name in families for s in families[name].samples]
        for sample in samples:
            if sample.name not in wanted:
                continue
            model = default_model
            if fmt.model_label is not None:
                model = sample.labels.get(fmt.model_label, "")
                if not model or len(model) > MAX_MODEL_LEN:
                    raise ExpositionError(
                        f"{sample.name}: label {fmt.model_label!r} missing or too long")
            value = float(sample.value)
            if not (math.isfinite(value) and value >= 0):
                raise ExpositionError(f"{sample.name}{sample.labels}: value {value!r} is not a "
                                      "finite count >= 0")
            fields = models.get(model)
            if fields is None:
                if len(models) >= MAX_MODELS:
                    raise ExpositionError(f"more than {MAX_MODELS} models in one exposition")
                fields = models[model] = {}
            fields[name] = fields.get(name, 0.0) + value * src.scale
    return Reading(fmt.name, models)


class CounterTracker:
    """Deltas of one server's cumulative counters between scrapes, resets included."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] | None = None
        self.resets = 0  # counters seen going backwards (server restarts)

    def rebase(self) -> None:
        """The next reading is a baseline (a new process: its earlier work was not measured)."""
        self._last = None

    def update(
        self, models: Mapping[str, Mapping[str, float]]
    ) -> dict[str, dict[str, float]] | None:
        """Per model and field, the increase since the last reading; None for a baseline."""
        current = {(m, f): v for m, fields in models.items() for f, v in fields.items()}
        last, self._last = self._last, current
        if last is None:
            return None
        out: dict[str, dict[str, float]] = {}
        for key, value in current.items():
            before = last.get(key)
            if before is None:  # a series born after the baseline started at zero
                delta = value
            elif value < before:  # a reset: the counter restarted from zero
                self.resets += 1
                delta = value
            else:
                delta = value - before
            if delta > 0:
                out.setdefault(key[0], {})[key[1]] = delta
        return out


# --- energy per window ----------------------------------------------------------------------------


@dataclass
class _Window:
    start_s: float
    end_s: float
    deltas: dict[str, dict[str, float]]
    token_work: bool  # the server counts output tokens: its energy is token calls' energy
    energy_j: float = 0.0
    co2e_g: float = 0.0


@dataclass
class _Piece:
    """A stretch of the consumer's energy not yet in a window (spread evenly over its time)."""

    start_s: float
    end_s: float
    energy_j: float
    g_per_j: float


@dataclass
class _Consumer:
    boundary_s: float | None = None  # end of the last window; None: no baseline yet
    tail: list[_Piece] = field(default_factory=list)  # energy after boundary_s
    windows: list[_Window] = field(default_factory=list)  # closed, not yet emitted
    emitted_until_s: float = -math.inf


@dataclass
class ScrapeSettlement:
    """Rows for call_minute (additive), per-consumer (requests, energy) and between-window
    energy, in the shapes ``storeops.settle_batches`` takes."""

    minute_rows: list[dict] = field(default_factory=list)
    job_calls: dict[str, tuple[int, float]] = field(default_factory=dict)
    between_j: dict[str, float] = field(default_factory=dict)


def _overlap_j(piece: _Piece, lo_s: float, hi_s: float) -> float:
    width = piece.end_s - piece.start_s
    if width <= 0:
        return piece.energy_j if lo_s < piece.start_s <= hi_s else 0.0
    part = min(piece.end_s, hi_s) - max(piece.start_s, lo_s)
    return piece.energy_j * (part / width) if part > 0 else 0.0


def weights(deltas: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    """How a window's energy is split over its models: by compute time where the server reports
    it (Triton), else by tokens read and written, else by requests; None when no work was done.

    Tokens in and out count alike here: a window's split is between models of one server, and
    no fit of prefill against decode power exists per server yet (see docs/architecture.md)."""
    for fields in (("work",), ("tokens_in", "tokens_out"), ("requests",)):
        w = {m: sum(d.get(f, 0.0) for f in fields) for m, d in deltas.items()}
        if sum(w.values()) > 0:
            return w
    return None


class ScrapeLedger:
    """Per consumer (a scraped server's job): its attributed energy, cut into windows at each
    scrape and split over the window's models by their work. Every joule given to
    ``add_interval`` ends up once in a window's rows or in ``between_j`` (energy before the first
    scrape, in windows without work, after the last one, or arriving after its window was
    settled), exactly up to float rounding. Not thread-safe: the daemon holds its state lock."""

    def __init__(self, settle_s: float = 5.0, pue: float = 1.0,
                 price_per_kwh: float | None = None) -> None:
        self.settle_s = settle_s
        self.pue = pue
        self.price_per_kwh = price_per_kwh
        self._consumers: dict[str, _Consumer] = {}
        self._between: dict[str, float] = {}
        self.late_j = 0.0  # energy that arrived after its window was settled (went to between)

    def watches(self, consumer: str) -> bool:
        return consumer in self._consumers

    def watch(self, consumer: str) -> None:
        self._consumers.setdefault(consumer, _Consumer())

    def baseline(self, consumer: str, t_s: float) -> None:
        """A baseline scrape at ``t_s``: energy before it belongs to no window."""
        st = self._consumers.setdefault(consumer, _Consumer())
        self._to_between(consumer, st.tail)
        st.tail = []
        st.boundary_s = t_s
        if not st.windows:
            st.emitted_until_s = max(st.emitted_until_s, t_s)

    def add_interval(self, consumer: str, item: AttributedInterval, energy_j: float) -> None:
        st = self._consumers.get(consumer)
        if st is None or energy_j == 0:
            return
        iv = item.interval
        g_per_j = co2e_g(1.0, item.intensity.intensity_g_per_kwh, self.pue)
        pieces = _pieces(iv.start_s, iv.end_s, iv.segments, energy_j, g_per_j)
        if st.boundary_s is None:
            self._to_between(consumer, pieces)
            return
        for piece in pieces:
            rest = piece.energy_j
            for w in st.windows:  # windows closed but not emitted: they still take energy
                part = _overlap_j(piece, w.start_s, w.end_s)
                if part:
                    w.energy_j += part
                    w.co2e_g += part * g_per_j
                    rest -= part
            if piece.end_s > st.boundary_s:
                after = _overlap_j(piece, st.boundary_s, math.inf)
                st.tail.append(_Piece(max(piece.start_s, st.boundary_s), piece.end_s, after,
                                      g_per_j))
                rest -= after
            if len(st.tail) > MAX_TAIL_PIECES:
                st.tail = [_merge(st.tail[:-1]), st.tail[-1]]
            # What is left lies before the baseline, in a settled window, or in no window:
            # between-window energy, never re-opened (and counted as late when settled).
            if rest > 0:
                if piece.start_s < st.emitted_until_s:
                    self.late_j += rest
                self._add_between(consumer, rest)

    def close_window(self, consumer: str, t_s: float, deltas: dict[str, dict[str, float]],
                     token_work: bool | None = None) -> None:
        """A scrape at ``t_s`` with the counters' increases since the last one. ``token_work``:
        the server counts output tokens (``counts_tokens``); None infers it from the deltas."""
        st = self._consumers.get(consumer)
        if st is None or st.boundary_s is None:
            self.baseline(consumer, t_s)
            return
        if t_s <= st.boundary_s:  # a clock that did not move: nothing to cut
            return
        if token_work is None:
            token_work = any("tokens_out" in d for d in deltas.values())
        w = _Window(st.boundary_s, t_s, deltas, token_work)
        keep: list[_Piece] = []
        for piece in st.tail:
            part = _overlap_j(piece, w.start_s, w.end_s)
            w.energy_j += part
            w.co2e_g += part * piece.g_per_j
            if piece.end_s > t_s:
                keep.append(_Piece(t_s, piece.end_s, piece.energy_j - part, piece.g_per_j))
        st.tail = keep
        st.windows.append(w)
        st.boundary_s = t_s

    def forget(self, consumer: str) -> None:
        """The consumer's scrape target moved on (its process ended): what is open is settled at
        the next ``settle``; energy still arriving goes to between-window energy."""
        st = self._consumers.get(consumer)
        if st is not None:
            self._to_between(consumer, st.tail)
            st.tail = []
            st.boundary_s = None

    def settle(self, now_s: float) -> ScrapeSettlement:
        return self._settle(now_s - self.settle_s)

    def flush(self) -> ScrapeSettlement:
        out = self._settle(math.inf)
        for consumer, st in self._consumers.items():
            self._to_between(consumer, st.tail)
            st.tail = []
        out.between_j = self._drain_between(out.between_j)
        return out

    # -- internals -------------------------------------------------------------------------

    def _settle(self, cutoff_s: float) -> ScrapeSettlement:
        out = ScrapeSettlement()
        rows: dict[tuple[int, str], dict] = {}
        for consumer, st in list(self._consumers.items()):
            due = [w for w in st.windows if w.end_s < cutoff_s]
            if not due:
                continue
            st.windows = [w for w in st.windows if w.end_s >= cutoff_s]
            st.emitted_until_s = max(st.emitted_until_s, due[-1].end_s)
            calls, energy = 0, 0.0
            for w in due:
                n, e = self._emit(consumer, w, rows)
                calls += n
                energy += e
            if calls or energy:
                out.job_calls[consumer] = (calls, energy)
        out.minute_rows = list(rows.values())
        out.between_j = self._drain_between({})
        return out

    def _emit(
        self, consumer: str, w: _Window, rows: dict[tuple[int, str], dict]
    ) -> tuple[int, float]:
        share = weights(w.deltas)
        if share is None:
            self._add_between(consumer, w.energy_j)
            given = 0.0
        else:
            given = w.energy_j
        total_w = sum(share.values()) if share else 0.0
        minute_s = int(math.floor((w.start_s + w.end_s) / 2 / 60.0) * 60)
        price = self.pue * (self.price_per_kwh or 0.0) / J_PER_KWH
        calls = 0
        for model, d in w.deltas.items():
            frac = share[model] / total_w if share else 0.0
            energy_j = w.energy_j * frac
            n = int(round(d.get("requests", 0.0)))
            t_in, t_out = int(round(d.get("tokens_in", 0.0))), int(round(d.get("tokens_out", 0.0)))
            row = rows.get((minute_s, model))
            if row is None:
                row = rows[(minute_s, model)] = {
                    "minute_s": minute_s, "model": model, "calls": 0, "busy_s": 0.0,
                    "energy_j": 0.0, "co2e_g": 0.0, "cost": 0.0, "tokens_in": 0,
                    "tokens_out": 0, "token_calls": 0, "token_energy_j": 0.0,
                }
            row["calls"] += n
            row["busy_s"] += d.get("busy_s", 0.0)
            row["energy_j"] += energy_j
            row["co2e_g"] += w.co2e_g * frac
            row["cost"] += energy_j * price
            row["tokens_in"] += t_in
            row["tokens_out"] += t_out
            if w.token_work:
                # The server counts tokens for every request it serves: its requests are token
                # calls and all of the row's energy is theirs (carbonwatch.tokens divides it).
                row["token_calls"] += n
                row["token_energy_j"] += energy_j
            calls += n
        return calls, given

    def _to_between(self, consumer: str, pieces: list[_Piece]) -> None:
        for piece in pieces:
            self._add_between(consumer, piece.energy_j)

    def _add_between(self, consumer: str, energy_j: float) -> None:
        if energy_j:
            self._between[consumer] = self._between.get(consumer, 0.0) + energy_j

    def _drain_between(self, into: dict[str, float]) -> dict[str, float]:
        for consumer, energy_j in self._between.items():
            into[consumer] = into.get(consumer, 0.0) + energy_j
        self._between = {}
        return into


def _merge(pieces: list[_Piece]) -> _Piece:
    energy_j = math.fsum(p.energy_j for p in pieces)
    grams = math.fsum(p.energy_j * p.g_per_j for p in pieces)
    return _Piece(pieces[0].start_s, max(p.end_s for p in pieces), energy_j,
                  grams / energy_j if energy_j > 0 else pieces[-1].g_per_j)


def _pieces(start_s: float, end_s: float, segments: tuple[tuple[float, float], ...],
            energy_j: float, g_per_j: float) -> list[_Piece]:
    """The interval's energy as pieces shaped by its power segments ((end_s, energy_j) pairs,
    scaled to ``energy_j``), or one even piece without a usable shape."""
    total = math.fsum(e for _, e in segments) if segments else 0.0
    if not (total > 0 and math.isfinite(total)) or any(e < 0 for _, e in segments):
        return [_Piece(start_s, max(end_s, start_s), energy_j, g_per_j)]
    out, lo = [], start_s
    for hi, e in segments:
        hi = max(hi, lo)
        out.append(_Piece(lo, hi, e / total * energy_j, g_per_j))
        lo = hi
    return out
