"""The model zoo: every architecture of the method's comparison, in plain torch."""

from training.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
