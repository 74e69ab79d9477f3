"""The toy world's shipped models: the trained pixel-space prior that ``guidance.model: toy`` loads and
the view/family/colour classifier, package data in ``dreamperp/toy/weights/`` found by :mod:`.assets`
(docs/design.md §10). The world, its classifier code and the metrics are research code, ``research/toy/``
outside the wheel."""
