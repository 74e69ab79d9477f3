"""The toy world's research code (docs/design.md §10): the procedural world (``world``), its captions
with web view bias (``captions``), the view/family/colour classifier (``classifier``), the Janus
metrics of a turntable (``janus``) and the rendering of a trained run's turntable for them
(``turntable``). The trained prior and classifier weights ship in the package, ``dreamperp/toy/weights/``."""
