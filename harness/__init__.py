"""The experiment harness that the entry scripts of scripts/ and the benchmarks share:
the constants and their checks (cli), the run directory, resume and checkpoints, process
start-up (launch), TensorBoard and figures, and the experiments of each script family
(fit, pipeline, race)."""
