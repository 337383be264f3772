"""The MorphNet steps (shrink, expand, retrain, run): each takes a `RunContext`
and returns a typed result the next step uses."""
