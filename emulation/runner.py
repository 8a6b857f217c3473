"""A scenario emulated: every (case, controller) unit over real sockets, one after another, into
the same run result (and run folder) as a simulation, marked as emulated.

Units run one at a time (the machine's cores are the emulation's: link, receiver, sender), each
on the case's inputs drawn exactly as the simulator draws them (`sim.inputs.case_inputs`), so
the simulator can replay the same requests (`emulation.fidelity`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from kvcast.chunk_cost_file import ChunkCostTable
from kvcast.chunks import TEXT_LEVEL
from kvcast.errors import InputError
from kvcast.sim.inputs import CaseInputs, Setup, build_setup, case_inputs
from kvcast.sim.parts import MemoryParts
from kvcast.sim.runner import RunResult, UnitsFailed, assemble_run
from kvcast.sim.scenario import Scenario
from kvcast.sim.units import UnitFailure, run_unit

from .session import EmulationOptions, Emulator, emulated_scenario

# controllers that send one profile level whatever happens (kvcast.controllers.simple)
_BASELINE_LEVELS = {"int8": "int8", "raw": "fp16"}


def payload_levels(sc: Scenario, setup: Setup, controllers: Sequence[str]) -> tuple[str, ...]:
    """The levels a run can send: the adaptive ladder and every fixed or baseline controller's."""
    out = list(setup.ladder)
    for name in controllers:
        kind, _, arg = name.partition(":")
        level = arg if kind == "fixed" else _BASELINE_LEVELS.get(kind)
        if level is not None and level != TEXT_LEVEL:
            out.append(level)
    return tuple(dict.fromkeys(out))


def emulate_scenario(
    sc: Scenario,
    chunk_costs: ChunkCostTable,
    payloads: Any,
    options: EmulationOptions,
    controllers: Sequence[str] | None = None,
    progress: bool = False,
    setup: Setup | None = None,
) -> RunResult:
    """Emulate every case with every controller (the bound is the simulator's); `payloads` are
    the encoded chunks (`kvcast.profiling.chunk_payloads`) of the scenario's chunk-cost spec;
    `setup`: the scenario's, where the caller built it already (it chose the payloads' levels)."""
    sc = emulated_scenario(sc, options)
    setup = setup or build_setup(sc, chunk_costs)
    names = list(controllers or sc.controllers)
    missing = [lv for lv in payload_levels(sc, setup, names) if lv not in payloads.levels]
    if missing:
        raise InputError(f"emulation: no encoded chunks of level(s) {', '.join(missing)}")
    cases = sc.cases()
    units = [(i, name) for i in range(len(cases)) for name in names]
    inputs: dict[int, CaseInputs] = {}

    def inputs_of(i: int) -> CaseInputs:
        if i not in inputs:
            inputs[i] = case_inputs(sc, setup, cases[i])
        return inputs[i]

    parts = MemoryParts()
    total = len(units) * sc.workload.requests
    bar = tqdm(total=total, desc=f"emulate {sc.name}", unit="request", disable=not progress)
    t0 = time.perf_counter()
    model = sc.real_codec.model if sc.real_codec and sc.real_codec.text == "model" else None
    if model is not None and payloads.token_ids() is None:
        raise InputError(
            f"{sc.source}: field 'real_codec.text': 'model' needs a model that reads text; "
            f"{model!r} has none"
        )
    with Emulator(payloads, options, model=model) as emu:
        for unit in units:
            out = run_unit(sc, setup, inputs_of, unit, lambda: bar.update(1), run=emu.run_unit)
            if isinstance(out, UnitFailure):
                bar.close()
                if out.input_error:
                    raise UnitsFailed(f"{out.label}: {out.message}")
                raise RuntimeError(f"{out.label}:\n{out.traceback}")
            parts.put(out)
        relay_stats = list(emu.relay_stats)
    bar.close()
    res = assemble_run(sc, setup, names, units, parts, time.perf_counter() - t0)
    res.summary["emulation"] = {
        "dilation": options.dilation,
        "forward_delay_s": sc.link.delay_s,
        "reverse_delay_s": sc.link.ack_delay_s,
        "bound": "simulated: the oracle plans each request alone on the modelled link",
        "receiver": "codec decode run on this machine's CPU for KV chunks; TEXT prefill and the "
        + (
            f"first-token step run with the real model ({model}) on this CPU"
            if model
            else "first-token step waited for their modelled time"
        ),
        "relay_late_max_s": max((s.get("late_max_s", 0.0) for s in relay_stats), default=0.0),
        "relay_late_over_1ms": sum(s.get("late_over_1ms", 0) for s in relay_stats),
        "relay_pieces": sum(s.get("pieces", 0) for s in relay_stats),
    }
    return res
