"""openk1: the Kimi k1.5 training recipe (pretrain -> SFT -> long-CoT SFT -> RL -> long2short)."""

__version__ = "0.1.0"
