"""Fan-out work (sweeps, explorations, regressions) on this machine or a Dask cluster: :mod:`.executor`."""
