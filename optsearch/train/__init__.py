"""How a genome is scored: tasks (data, models, augmentation), populations trained together, the evaluator.

Every training run of the project — a study's generation, the funnel, the benchmark — goes through
:func:`optsearch.train.evaluate.evaluate`. Imports only ``genome`` and ``errors``.
"""
