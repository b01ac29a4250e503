"""circuit-insights: WeightLens and CircuitLens explanations of transcoder features."""

__version__ = "0.1.0"
