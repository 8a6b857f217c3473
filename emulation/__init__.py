"""Emulation: a scenario over real sockets through a trace-driven link emulator on loopback, a
receiver that really decodes, and the simulator checked against it (docs/emulation.md).

`link` (mm-link semantics on real bytes), `relay` (the emulator: a TCP relay, its own process),
`wire` (the sender's and receiver's frames), `receiver` (really decodes), `sender` (controllers
live), `session` (processes for a run), `runner` (a scenario into a run folder), `fidelity`
(simulation against emulation).
"""
