"""The quality gate's pure rules: each a small class with one interface (see :mod:`learner.gate.base`)."""
