"""Record the golden run figures that tests/test_golden_runs.py compares against.

Run from the repository root after a change that is *meant* to change results, and say why in
the commit: ``.venv/bin/python tests/golden/make_golden_runs.py``. Each case runs ``kvcast run``
on a shipped scenario with deterministic controllers and records a hash of the printed table
(without the timing line) and of the run folder's tables, so a refactor that changes any figure
fails the test.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "runs.json"

# (case name, scenario, controllers): every controller here is deterministic and fast.
CASES = [
    (
        "quickstart",
        "quickstart",
        "cachegen,cachegen-artifact,bba,mpc,fixed:klt-mid,text,int8,oracle",
    ),
    (
        "cachegen-adaptation",
        "cachegen-adaptation",
        "int8,fixed:cachegen-q1,cachegen,cachegen-artifact,bba,mpc,text,oracle",
    ),
    ("shared-link", "shared-link", "cachegen,bba,fixed:klt-coarse,text,oracle"),
]
TABLES = ("requests.parquet", "chunks.parquet", "traces.parquet")


def table_hash(path: Path) -> str:
    """sha256 of a Parquet table's content as CSV (exact float repr), independent of file bytes."""
    frame = pd.read_parquet(path)
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def printed_table(stdout: str) -> str:
    """The run's printed table without lines that hold wall-clock times or paths."""
    keep = [
        line
        for line in stdout.splitlines()
        if not line.startswith("(") and not line.startswith("run folder:")
    ]
    return "\n".join(keep)


def run_case(kvcast: str, scenario: str, controllers: str, out: Path) -> dict[str, str]:
    cmd = [kvcast, "run", scenario, "--controllers", controllers, "--out", str(out)]
    cmd += ["--no-report", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    figures = {"table": hashlib.sha256(printed_table(done.stdout).encode()).hexdigest()}
    for name in TABLES:
        figures[name] = table_hash(out / name)
    return figures


def chunk_hashes() -> dict[str, str]:
    """sha256 of one synthetic chunk encoded at every level and baseline of the default ladder."""
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from codec_data import synthetic_kv

    from kvcast.codec.baselines import BaselineSpec
    from kvcast.codec.codec import default_ladder, encode_chunk
    from kvcast.codec.model_tables import fit_model_tables
    from kvcast.codec.transforms import fit_klt

    ladder = default_ladder()
    names = ladder.all_names()
    chunks = [synthetic_kv(n_tokens=64, seed=s) for s in range(3)]
    specs = [ladder.get(n) for n in names if not isinstance(ladder.get(n), BaselineSpec)]
    profile = fit_model_tables(
        chunks, specs, model_id="golden", transforms=fit_klt(chunks, [None] * len(chunks))
    )
    gains = np.linspace(0.5, 2.0, 4 * 16, dtype=np.float32).reshape(4, 16)
    kv = synthetic_kv(n_tokens=37, seed=7)
    return {
        name: hashlib.sha256(
            encode_chunk(kv, name, model_tables=profile, key_gains=gains, context_start=True)
        ).hexdigest()
        for name in names
    }


def main() -> int:
    kvcast = str(Path(sys.executable).parent / "kvcast")
    golden = {"encoded_chunks": chunk_hashes()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, scenario, controllers in CASES:
            golden[name] = run_case(kvcast, scenario, controllers, Path(tmp) / name)
            print(name, golden[name])
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
