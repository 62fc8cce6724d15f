"""Hyperparameter sweeps on Optuna: ``tunesmith sweep CONFIG --space SPACE.yaml`` (docs/sweeps.md).

    from tunesmith.sweep.run import SweepOptions, sweep
    result = sweep(SweepOptions("recipes/lora.yaml", "space.yaml", trials=8, sampler="random"))

:mod:`~tunesmith.sweep.run` is the entry point (nothing is imported here, so the command line parser,
which needs only :mod:`~tunesmith.sweep.options`, loads no Optuna); :mod:`~tunesmith.sweep.space` reads the
space file, :mod:`~tunesmith.sweep.objective` finds the number a run is judged by,
:mod:`~tunesmith.sweep.study` runs the trials, :mod:`~tunesmith.sweep.outputs` writes the table,
``best.yaml`` and the report.
"""
