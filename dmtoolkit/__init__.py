"""dmtoolkit: which source data help or hurt a transfer-learned model (datamodels for transfer learning)."""

__version__ = "0.1.0"
