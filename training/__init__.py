"""The offline training job (extra `train`): datasets, models, training, evaluation, export."""
