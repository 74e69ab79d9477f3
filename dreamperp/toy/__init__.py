"""The toy world (procedural objects with known front/back, captions with web view bias), its
trained pixel-space prior and its view/family/colour classifier (docs/design.md §10)."""
