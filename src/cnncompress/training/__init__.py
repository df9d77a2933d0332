"""Training: the trainer (schedules, checkpoints, resume), distributed data parallel, distillation (label-free,
with FitNets hints). Above ``measure`` (validation error) and ``methods`` (a compressed layer's after-step)."""
