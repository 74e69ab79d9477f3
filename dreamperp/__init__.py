"""dreamperp: text-to-3D with Score Distillation Sampling, Perp-Neg and SEGA."""

__version__ = "0.1.0"
