"""tuneyard: fine-tune LoRA adapters as jobs and serve them beside their base model."""

__version__ = "0.1.0"
