"""The method: hooks on decoder layers, generation, SAE features of prompts and responses, the
conditional-difference map and its estimators, the token-active edit (DSPA), and the baselines.

It imports nothing from the rest of the package: loading, evaluation, the toy world and the notebook
helpers are built on it. The paper's equations live in ``features`` (u, v), ``estimators`` and ``cdmap``
(the map, s(x), K_neg/K_pos) and ``dspa`` (the edit); see docs/design.md.
"""
