"""Training, fitting and scoring one run (paper 2.2, 3): the trainer behind ``experiments.run``.

- `settings`: `RunConfig` (frozen; its fields are the run's flags) and the configs a run's params hold;
- `estimator`: the estimator plumbing (build, train with early stopping, embed, windowed embedding);
- `learned`: `train_learned(entry, tracks, settings)`, the inputs and objective a run declares;
- `fitted`: fitting a fitted model, a baseline's lists, re-ranking;
- `run`: one run end to end (record, train or fit, score, write).
"""
