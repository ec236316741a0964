"""Pure research library for Ambient Diffusion Policy: numpy + torch only.

Never import ray, mlflow, optuna or boto3 here; jobs/ wires this library to those.
"""

__version__ = "0.1.0"
