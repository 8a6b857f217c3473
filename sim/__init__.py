"""kvcast.sim: the SimPy model of sender -> link -> GPU receiver, scenarios and runs.

    from kvcast.sim.scenario import load_scenario
    from kvcast.sim.runner import run_scenario, write_run
    result = run_scenario(load_scenario("quickstart"))
    write_run(result, Path("out/runs/q"))

Modules: `scenario` (YAML schema, sweeps), `presets` (models, GPUs), `costs` (what each chunk
costs), `receiver` (GPU times), `engine` (the SimPy processes), `network` (link adapters), `link`
(the trace-driven bottleneck), `inputs` (what a run and each case are built from), `units` (one
controller on one case), `executors` (where units run: here, local processes, Ray), `parts`
(finished units' rows, in memory or as Parquet parts), `runner` (a scenario's units into one
result), `summary` (per-controller figures), `trace_samples`, `compare`, `bench` (`kvcast bench
sim` and `sweep`), `limits` (memory estimate).
"""
