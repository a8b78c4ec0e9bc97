"""distill: MiniLMv2 relation distillation for BERT-family encoders, scaled with DeepSpeed."""

__version__ = "0.1.0"
