"""kvcast.sim: the SimPy model of sender -> link -> GPU receiver, scenarios and runs.

    from kvcast.sim.scenario import load_scenario
    from kvcast.sim.runner import run_scenario, write_run
    result = run_scenario(load_scenario("quickstart"))
    write_run(result, Path("out/runs/q"))

Modules: `scenario` (YAML schema, sweeps), `presets` (models, GPUs), `costs` / `real_codec`
(what each chunk costs), `receiver` (GPU times), `engine` (the SimPy processes), `paths` (link
adapters), `link` (the trace-driven bottleneck), `runner` (cases x controllers, the run folder),
`cli` (`kvcast run`, `compare`, `bench sim`).
"""
