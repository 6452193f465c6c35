"""Adversarial robustness under quantization (QaLoF's last experiment): GBDA against the full-precision fine-tuned
classifier, and that classifier's accuracy on the attack's texts at other precisions."""
