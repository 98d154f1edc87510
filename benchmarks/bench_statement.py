"""Statement benchmark: what the footprint (embodied carbon, the marginal figure, payback) adds to
``report --model`` on a busy node's store.

The store: 7 days of an 8-GPU node in 1-minute rollups (tests/seed.py), every GPU recorded as an
A100 (so embodied carbon is computed, not skipped). Prints the time of the plain statement (its
rollup reads) and of the footprint's reads over the model's minute rows, per model, median of 5.

    .venv/bin/python benchmarks/bench_statement.py [--db PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from seed import SeedSpec, seed_store  # noqa: E402

from carbonwatch.config import Settings  # noqa: E402
from carbonwatch.embodied import record_devices  # noqa: E402
from carbonwatch.footprint import extend  # noqa: E402
from carbonwatch.model import DeviceClass, DeviceInfo, Provenance  # noqa: E402
from carbonwatch.statement import _hourly, model_statement  # noqa: E402
from carbonwatch.store import open_store  # noqa: E402

SPEC = SeedSpec(days=7, gpus=8, models=("llama-ft", "whisper-s", "resnet50"), training_jobs=12,
                calls=5_000_000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="cw-bench-stmt-")) / "s.db"
    if not db.exists():
        t = time.perf_counter()
        seed_store(db, SPEC)
        print(f"built {db} in {time.perf_counter() - t:.0f} s")
    with open_store(db) as store:
        ids = [r[0] for r in store.conn.execute("SELECT DISTINCT device_id FROM energy_minute")]
        gpus = [DeviceInfo(d, DeviceClass.GPU, "NVIDIA A100-SXM4-80GB", "nvml-energy-counter",
                           Provenance.MEASURED) for d in ids if d.startswith("gpu")]
        with store.transaction():
            record_devices(store.conn, gpus, 0.0)
        rows = store.conn.execute("SELECT COUNT(*) FROM energy_minute").fetchone()[0]
    print(f"{rows:,} energy_minute rows, {len(gpus)} GPUs recorded as A100")
    settings = Settings()
    with open_store(db, read_only=True) as store:
        for model in SPEC.models:
            full, foot = [], []
            for _ in range(5):
                t = time.perf_counter()
                s = model_statement(store, model, settings)
                full.append(time.perf_counter() - t)
                hourly = _hourly(store.conn, model, True)
                t = time.perf_counter()
                extend(s, store.conn, model, settings, hourly)
                foot.append(time.perf_counter() - t)
            print(f"{model:<10} statement with footprint {statistics.median(full) * 1000:8.1f} ms"
                  f"   of which footprint {statistics.median(foot) * 1000:8.1f} ms"
                  f"   embodied {s['totals']['embodied_co2e_g']:.1f} g")


if __name__ == "__main__":
    main()
