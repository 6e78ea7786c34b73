"""Training objectives as specs: one `ObjectiveSpec` per objective (spec.py), found by name through
the registry (registry.py). The trainer, planner, evaluation and conversion ask the spec of
`model.objective`; none of them names an objective. How to add one: docs/objectives.md."""
