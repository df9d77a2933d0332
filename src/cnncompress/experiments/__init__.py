"""Everything that runs studies: recipes in, measured tables, plots and reports out.

- ``schema``: every key of the three recipe kinds (bench, distill, cascade) and the one validator.
- ``recipe``: bench recipes -> ``Recipe`` with one ``Row`` per (model, method pipeline, grid point, seed).
- ``compress_one``: one model through a pipeline of methods, saved and loaded back for inference.
- ``bench``: ``Bench`` trains the baselines and measures every row (resumable); ``run_bench`` is the whole job.
- ``executors``: where bench rows run (in this process, or Ray tasks on a cluster).
- ``report``: tables (text, markdown, CSV, JSON) and figures of bench rows.
- ``distill_table``: distillation runs and the Table-3 recipe runner.
- ``cascade_grid``: the early-exit cascade study (base + cascades, threshold sweeps, plots).
- ``reproduce``: the papers' experiments side by side with ours, findings checked.
- ``fixed_point_sweep``: fixed-point word-length sweep (``python -m cnncompress.experiments.fixed_point_sweep``).

The command line (``cnncompress.commands``) only parses flags and calls these; nothing here imports it.
"""
