"""Measuring steerers: judged responses, multiple choice, judges and benchmark protocols, file formats,
lm-eval, FLOP counts, the fine-tuning baselines (DPO, RAHF-SCIT) and the method-comparison experiment."""
