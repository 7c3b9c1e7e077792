"""peftstd: a standard, validated, reproducible way to fine-tune and ship NLP transformers."""

__version__ = "0.1.0"
