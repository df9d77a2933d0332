"""``optimize``: the most accurate copy of a model within a byte (and latency) budget: per-layer sensitivity
(``sensitivity``), a latency model of each choice (``latency_model``), the byte-budget knapsack (``budget_search``),
the driver (``optimizer``) and its report (``report``)."""
