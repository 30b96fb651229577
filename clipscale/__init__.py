"""clipscale: CLIP scaling-law studies on Ray + DeepSpeed, tracked in MLflow."""
__version__ = "0.1.0"
