"""Scenario files: typed, validated, with every default filled in, and expanded into cases.

A scenario YAML names a target model and GPU (presets, or `profile` for the codec profile's own
measured model and device), a codec profile, a workload, a link, SLOs and controllers (fields in
docs/scenarios.md). Three fields sweep when given a list: `seed`, `slo_s` and `link.trace` (a
folder of traces counts as its list of files); their product is the scenario's cases. Every
controller runs on every case with the same workload, chunk costs and trace.

Errors name the file and the dotted field, and say what was expected.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kvcast.chunks import TEXT_LEVEL
from kvcast.controllers.registry import get_controller
from kvcast.errors import InputError
from kvcast.fields import Fields
from kvcast.objective import BOUND_CONTROLLER, Objective, objective_from_dict

from . import presets
from .traceref import resolve_trace_refs, synthetic_refs, synthetic_trace

ARRIVALS = ("at_once", "fixed", "poisson")
COSTINGS = ("profile", "real_codec")
LINK_KINDS = ("trace", "per_chunk")
DEFAULT_CONTROLLERS = ("cachegen", "cachegen-artifact", "bba", "mpc", "text", "oracle")


@dataclass(frozen=True)
class ArrivalSpec:
    process: str = "at_once"  # at_once | fixed | poisson
    interval_s: float = 0.0  # fixed: time between arrivals
    rate_per_s: float = 0.0  # poisson: mean arrivals per second
    start_s: float = 0.0  # first arrival


@dataclass(frozen=True)
class ContextSpec:
    kind: str = "fixed"  # fixed | uniform | choice
    values: tuple[int, ...] = (9000,)  # fixed: (n,), uniform: (lo, hi) inclusive, choice: list


@dataclass(frozen=True)
class WorkloadSpec:
    requests: int = 1
    arrival: ArrivalSpec = field(default_factory=ArrivalSpec)
    context_tokens: ContextSpec = field(default_factory=ContextSpec)
    per_chunk_overhead_s: float = 0.0


@dataclass(frozen=True)
class LinkSpec:
    kind: str = "trace"  # trace | per_chunk
    traces: tuple[str, ...] = ()  # resolved file paths, or "synthetic:..." ids (sweep)
    synthetic: tuple[Mapping[str, Any], ...] = ()  # generated traces, one case each
    format: str | None = None
    bytes_per_opportunity: float | None = None
    scale: float = 1.0  # multiply the trace's bandwidth
    mean_gbps: float | None = None  # or: scale so the trace's mean is this
    mode: str = "mahimahi"  # the Link's mode (mahimahi | pensieve)
    delay_s: float = 0.0
    queue: str = "infinite"
    queue_bytes: float | None = None
    queue_packets: int | None = None
    low_gbps: float = 0.1  # per_chunk: i.i.d. uniform bandwidth per chunk
    high_gbps: float = 10.0
    # how long after a chunk arrives the sender learns it (the acknowledgement's way back) and
    # sends the next: 0 = at once (the default); an emulated link's reverse delay (docs/emulation.md)
    ack_delay_s: float = 0.0


@dataclass(frozen=True)
class ReceiverSpec:
    decode_melem_per_s: str | float = "profile"  # "profile": the profile's measured, per level
    gpu_count: int = 1
    prefill_efficiency: float = presets.DEFAULT_PREFILL_EFFICIENCY
    memory_efficiency: float = presets.DEFAULT_MEMORY_EFFICIENCY


@dataclass(frozen=True)
class RealCodecSpec:
    model: str = "smollm2"  # a KV source the codec package can capture from
    context: str = "prose"
    tokens: int = 4500
    device: str = "cpu"
    repeats: int = 3  # decode timings: median of this many
    # `kvcast emulate` only: the receiver's TEXT prefill and first-token step wait their modelled
    # time ("modelled") or run the real model on the real tokens and decoded KV ("model")
    text: str = "modelled"


EMULATED_TEXT = ("modelled", "model")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    source: str
    seeds: tuple[int, ...]
    slos: tuple[float, ...]
    model: str
    gpu: str
    profile: str
    costing: str
    chunk_tokens: int
    workload: WorkloadSpec
    link: LinkSpec
    receiver: ReceiverSpec
    controllers: tuple[str, ...]
    controller_params: Mapping[str, Mapping[str, Any]]
    real_codec: RealCodecSpec | None = None
    levels: tuple[str, ...] | None = None  # restricts the adaptive ladder (None: every level)
    objective: Objective = field(default_factory=Objective)

    def cases(self) -> list[Case]:
        traces = self.link.traces if self.link.kind == "trace" else ("per_chunk",)
        out = []
        for i, (trace, slo, seed) in enumerate(itertools.product(traces, self.slos, self.seeds)):
            out.append(Case(index=i, trace=trace, slo_s=slo, seed=seed))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved scenario (every default filled in), as written to scenario.yaml."""
        d = asdict(self)
        d.pop("source")
        d["seed"] = list(d.pop("seeds"))
        d["slo_s"] = list(d.pop("slos"))
        d["controllers"] = list(d["controllers"])
        d["controller_params"] = {k: dict(v) for k, v in self.controller_params.items()}
        d["levels"] = list(self.levels) if self.levels is not None else None
        d["objective"] = self.objective.to_dict()
        d["link"] = self._link_dict()
        wl = d["workload"]
        ctx = wl["context_tokens"]
        wl["context_tokens"] = {
            ctx["kind"]: ctx["values"][0] if ctx["kind"] == "fixed" else list(ctx["values"])
        }
        arr = wl["arrival"]
        if arr["process"] != "fixed":
            arr.pop("interval_s")
        if arr["process"] != "poisson":
            arr.pop("rate_per_s")
        return _plain(d)

    def _link_dict(self) -> dict[str, Any]:
        out = self._link_fields()
        if self.link.ack_delay_s:
            out["ack_delay_s"] = self.link.ack_delay_s
        return out

    def _link_fields(self) -> dict[str, Any]:
        ln = self.link
        if ln.kind == "per_chunk":
            return {
                "kind": ln.kind,
                "low_gbps": ln.low_gbps,
                "high_gbps": ln.high_gbps,
                "delay_s": ln.delay_s,
            }
        out: dict[str, Any] = {"kind": ln.kind}
        if len(ln.synthetic) == 1:
            out["synthetic"] = dict(ln.synthetic[0])
        elif ln.synthetic:
            out["synthetic"] = [dict(x) for x in ln.synthetic]
        else:
            out["trace"] = list(ln.traces)
        out.update(format=ln.format, bytes_per_opportunity=ln.bytes_per_opportunity)
        if ln.mean_gbps is not None:
            out["mean_gbps"] = ln.mean_gbps
        else:
            out["scale"] = ln.scale
        out.update(
            mode=ln.mode,
            delay_s=ln.delay_s,
            queue=ln.queue,
            queue_bytes=ln.queue_bytes,
            queue_packets=ln.queue_packets,
        )
        return out


@dataclass(frozen=True)
class Case:
    index: int
    trace: str
    slo_s: float
    seed: int

    @property
    def label(self) -> str:
        """The `case` column of the run tables."""
        return f"case-{self.index}"

    @property
    def trace_name(self) -> str:
        """The `trace` column of every run table: the trace file's name (or `synthetic:<kind>`);
        a scaling the scenario applies is recorded in scenario.yaml, not in the name."""
        return Path(self.trace).name


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Overrides:
    """Command-line replacements for a scenario's fields, applied before it is validated (so a
    file without `profile:` runs with `--profile`). An oracle (the bound) is always kept."""

    controllers: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    profile: str | None = None

    def apply(self, raw: Any, source: str) -> tuple[Any, str]:
        if not isinstance(raw, dict) or not (self.controllers or self.seeds or self.profile):
            return raw, source
        raw = dict(raw)
        if self.profile:
            raw["profile"] = self.profile
            source = f"{source} (--profile {self.profile})"
        if self.seeds:
            raw["seed"] = list(self.seeds)
        if self.controllers:
            names = list(self.controllers)
            if BOUND_CONTROLLER not in names:
                names.append(BOUND_CONTROLLER)
            raw["controllers"] = names
            params = raw.get("controller_params")
            if isinstance(params, dict):
                raw["controller_params"] = {k: v for k, v in params.items() if k in names}
        return raw, source


def load_scenario(path: str | Path, overrides: Overrides | None = None) -> Scenario:
    """Read, validate and resolve a scenario YAML file (a path, or a shipped scenario's name)."""
    p = resolve_scenario_path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not a UTF-8 text file (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise InputError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    raw, source = (overrides or Overrides()).apply(raw, str(p))
    return scenario_from_dict(raw, source=source, base_dir=p.parent, default_name=p.stem)


SCENARIOS_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))


def resolve_scenario_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix not in (".yaml", ".yml") and p.parent == Path("."):
        cand = SCENARIOS_DIR / f"{p}.yaml"
        if cand.is_file():
            return cand
    raise InputError(
        f"scenario {str(path)!r} not found: not a file, and not a shipped scenario "
        f"({', '.join(shipped_scenarios())})"
    )


def scenario_from_dict(
    raw: Any, *, source: str, base_dir: Path, default_name: str = "scenario"
) -> Scenario:
    top = Fields(source, "", raw)
    name = top.string("name", default_name)
    description = str(top.get("description", ""))
    seeds = tuple(top.check_int("seed", v, lo=0) for v in top.listish("seed", 0))
    if not top.has("slo_s"):
        raise top.fail("slo_s", "required (seconds; a number or a list to sweep)")
    slos = tuple(top.check_number("slo_s", v, positive=True) for v in top.listish("slo_s", None))

    model = top.string("model", None)
    gpu = top.string("gpu", None)
    model, gpu = _preset_path(model, base_dir), _preset_path(gpu, base_dir)
    if model != "profile":
        presets.get_model(model, f"{source}: field 'model'")
    if gpu != "profile":
        presets.get_gpu(gpu, f"{source}: field 'gpu'")
    if (model == "profile") != (gpu == "profile"):
        raise top.fail(
            "gpu",
            "'model: profile' (the profile's own measured model and device) and 'gpu: profile' go "
            "together; otherwise name presets for both",
        )
    profile = top.string("profile", None)
    costing = top.string("costing", "profile", COSTINGS)
    chunk_tokens = top.integer("chunk_tokens", 1500)

    real = None
    if costing == "real_codec":
        rf = top.sub("real_codec")
        real = RealCodecSpec(
            model=rf.string("model", "smollm2"),
            context=rf.string("context", "prose"),
            tokens=rf.integer("tokens", 4500),
            device=rf.string("device", "cpu"),
            repeats=rf.integer("repeats", 3),
            text=rf.string("text", "modelled", EMULATED_TEXT),
        )
        rf.done()
        if model != "profile":
            raise top.fail(
                "model",
                "with 'costing: real_codec' the target is the real model: use 'model: profile'",
            )
    elif top.get("real_codec") is not None:
        raise top.fail("real_codec", "only allowed with 'costing: real_codec'")

    workload = _workload(top.sub("workload"))
    link = _link(top.sub("link"), base_dir)
    receiver = _receiver(top.sub("receiver"))

    ctrl_raw = top.listish("controllers", list(DEFAULT_CONTROLLERS))
    controllers = []
    for i, c in enumerate(ctrl_raw):
        if not isinstance(c, str) or not c:
            raise top.fail(f"controllers[{i}]", f"expected a controller name, got {c!r}")
        controllers.append(c)
    if len(set(controllers)) != len(controllers):
        raise top.fail("controllers", "each controller may be listed once")
    if "oracle" not in controllers:
        controllers.append("oracle")  # the bound: utility_vs_bound needs it
    params_raw = top.get("controller_params", {}) or {}
    if not isinstance(params_raw, Mapping):
        raise top.fail("controller_params", "expected a mapping controller -> {param: value}")
    params: dict[str, dict[str, Any]] = {}
    for k, v in params_raw.items():
        if k not in controllers:
            raise top.fail(f"controller_params.{k}", f"no controller {k!r} in 'controllers'")
        if not isinstance(v, Mapping):
            raise top.fail(f"controller_params.{k}", "expected a mapping param -> value")
        params[str(k)] = dict(v)
    levels = None
    if top.get("levels") is not None:  # null: every level of the profile
        raw_levels = top.listish("levels", None)
        for i, lv in enumerate(raw_levels):
            if not isinstance(lv, str) or not lv or lv == TEXT_LEVEL:
                raise top.fail(f"levels[{i}]", f"expected a codec level name, got {lv!r}")
        if len(set(raw_levels)) != len(raw_levels):
            raise top.fail("levels", "each level may be listed once")
        levels = tuple(raw_levels)
    objective = objective_from_dict(top.get("objective"), "objective", source)
    top.done()

    sc = Scenario(
        name=name,
        description=description,
        source=source,
        seeds=seeds,
        slos=slos,
        model=model,
        gpu=gpu,
        profile=profile,
        costing=costing,
        chunk_tokens=chunk_tokens,
        workload=workload,
        link=link,
        receiver=receiver,
        controllers=tuple(controllers),
        controller_params=params,
        real_codec=real,
        levels=levels,
        objective=objective,
    )
    _check_controllers(sc)
    return sc


def _preset_path(value: str, base_dir: Path) -> str:
    """A preset file named relative to the scenario becomes an absolute path; names stay."""
    p = Path(value)
    if p.suffix in (".yaml", ".yml", ".json") and not p.is_absolute() and (base_dir / p).is_file():
        return str((base_dir / p).resolve())
    return value


def _check_controllers(sc: Scenario) -> None:
    for i, name in enumerate(sc.controllers):
        try:
            get_controller(name)
        except InputError as exc:
            raise InputError(f"{sc.source}: field 'controllers[{i}]': {exc}") from None
        if name in sc.controller_params:
            try:
                get_controller(name, **sc.controller_params[name])
            except InputError as exc:
                raise InputError(f"{sc.source}: field 'controller_params.{name}': {exc}") from None


def _workload(f: Fields) -> WorkloadSpec:
    requests = f.integer("requests", 1)
    af = f.sub("arrival")
    process = af.string("process", "at_once", ARRIVALS)
    arrival = ArrivalSpec(
        process=process,
        interval_s=af.number("interval_s", 0.0, lo=0.0, required=True)
        if process == "fixed"
        else 0.0,
        rate_per_s=af.number("rate_per_s", 1.0, positive=True, required=True)
        if process == "poisson"
        else 0.0,
        start_s=af.number("start_s", 0.0, lo=0.0),
    )
    af.done()
    ctx = _context(f, f.get("context_tokens", 9000))
    overhead = f.number("per_chunk_overhead_s", 0.0, lo=0.0)
    f.done()
    return WorkloadSpec(
        requests=requests, arrival=arrival, context_tokens=ctx, per_chunk_overhead_s=overhead
    )


def _context(f: Fields, v: Any) -> ContextSpec:
    key = "context_tokens"
    if isinstance(v, int) and not isinstance(v, bool):
        return ContextSpec("fixed", (f.check_int(key, v),))
    if isinstance(v, Mapping) and len(v) == 1:
        kind, vals = next(iter(v.items()))
        if kind == "fixed":
            return ContextSpec("fixed", (f.check_int(f"{key}.fixed", vals),))
        if kind == "uniform":
            if not (isinstance(vals, list) and len(vals) == 2):
                raise f.fail(f"{key}.uniform", "expected [low, high] (inclusive)")
            lo, hi = (f.check_int(f"{key}.uniform", x) for x in vals)
            if hi < lo:
                raise f.fail(f"{key}.uniform", f"expected low <= high, got [{lo}, {hi}]")
            return ContextSpec("uniform", (lo, hi))
        if kind == "choice":
            if not (isinstance(vals, list) and vals):
                raise f.fail(f"{key}.choice", "expected a non-empty list of token counts")
            return ContextSpec("choice", tuple(f.check_int(f"{key}.choice", x) for x in vals))
    raise f.fail(
        key,
        f"expected a token count, or one of {{fixed: N}}, {{uniform: [lo, hi]}}, {{choice: [...]}}; got {v!r}",
    )


def _link(f: Fields, base_dir: Path) -> LinkSpec:
    kind = f.string("kind", "trace", LINK_KINDS)
    spec = LinkSpec(kind=kind)
    if kind == "per_chunk":
        low = f.number("low_gbps", 0.1, positive=True)
        high = f.number("high_gbps", 10.0, positive=True)
        if high < low:
            raise f.fail("high_gbps", f"expected >= low_gbps ({low}), got {high}")
        spec = replace(spec, low_gbps=low, high_gbps=high, delay_s=f.number("delay_s", 0.0, lo=0.0))
        spec = replace(spec, ack_delay_s=f.number("ack_delay_s", 0.0, lo=0.0))
        f.done()
        return spec
    synthetic = f.get("synthetic")
    has_trace = f.has("trace")
    if (synthetic is None) == (not has_trace):
        raise f.fail(
            "trace", "give exactly one of 'trace' (name, path, folder or list) and 'synthetic'"
        )
    if synthetic is not None:
        specs = synthetic if isinstance(synthetic, list) else [synthetic]
        if not specs:
            raise f.fail("synthetic", "expected a generator's mapping, or a non-empty list of them")
        syns = []
        for i, one in enumerate(specs):
            key = "synthetic" if len(specs) == 1 else f"synthetic[{i}]"
            if not isinstance(one, Mapping) or not isinstance(one.get("kind"), str):
                raise f.fail(
                    key,
                    "expected a mapping with 'kind' (a generator of kvcast.traces.synthetic) and "
                    "its parameters",
                )
            try:
                capacity = synthetic_trace(dict(one)).mean_bps()
            except InputError as exc:
                raise f.fail(key, str(exc)) from None
            if capacity <= 0:
                raise f.fail(key, "the trace delivers no bytes at all (every rate is 0)")
            syns.append(dict(one))
        traces: tuple[str, ...] = synthetic_refs(syns)
        if len(set(traces)) != len(traces):
            raise f.fail("synthetic", "the same generated trace is listed twice")
        spec = replace(spec, synthetic=tuple(syns))
    else:
        traces = tuple(resolve_trace_refs(f.listish("trace", None), base_dir, f.fail))
    fmt = f.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise f.fail("format", f"expected a trace format name, got {fmt!r}")
    bpo = f.get("bytes_per_opportunity")
    if bpo is not None:
        bpo = f.check_number("bytes_per_opportunity", bpo, positive=True)
    scale = f.number("scale", 1.0, positive=True)
    mean_gbps = f.get("mean_gbps")
    if mean_gbps is not None:
        mean_gbps = f.check_number("mean_gbps", mean_gbps, positive=True)
        if f.has("scale"):
            raise f.fail("mean_gbps", "give either 'scale' or 'mean_gbps', not both")
    queue = f.string("queue", "infinite", ("infinite", "droptail"))
    qb = f.get("queue_bytes")
    qp = f.get("queue_packets")
    if qb is not None:
        qb = f.check_number("queue_bytes", qb, positive=True)
    if qp is not None:
        qp = f.check_int("queue_packets", qp)
    spec = replace(
        spec,
        traces=traces,
        format=fmt,
        bytes_per_opportunity=bpo,
        scale=scale,
        mean_gbps=mean_gbps,
        mode=f.string("mode", "mahimahi", ("mahimahi", "pensieve")),
        delay_s=f.number("delay_s", 0.0, lo=0.0),
        queue=queue,
        queue_bytes=qb,
        queue_packets=qp,
        ack_delay_s=f.number("ack_delay_s", 0.0, lo=0.0),
    )
    f.done()
    return spec


def _receiver(f: Fields) -> ReceiverSpec:
    dec = f.get("decode_melem_per_s", "profile")
    if dec != "profile":
        dec = f.check_number("decode_melem_per_s", dec, positive=True)
    spec = ReceiverSpec(
        decode_melem_per_s=dec,
        gpu_count=f.integer("gpu_count", 1),
        prefill_efficiency=f.number(
            "prefill_efficiency", presets.DEFAULT_PREFILL_EFFICIENCY, positive=True
        ),
        memory_efficiency=f.number(
            "memory_efficiency", presets.DEFAULT_MEMORY_EFFICIENCY, positive=True
        ),
    )
    for key in ("prefill_efficiency", "memory_efficiency"):
        if getattr(spec, key) > 1:
            raise f.fail(key, f"a fraction of peak, expected <= 1, got {getattr(spec, key)}")
    f.done()
    return spec
