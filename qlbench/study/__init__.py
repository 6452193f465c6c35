"""A study as configured: config.yaml validated (config), its cells (grid), the mask language (masks), LoRA targets
(targets) and the planted-trouble setting (fail). Pure configuration: nothing here imports torch."""
