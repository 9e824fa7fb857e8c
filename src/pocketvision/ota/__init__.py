"""Over-the-air updates, device side: rollout plans (what a device should do) and the device's updater. The
registry that serves them is ``serve``, one layer up."""
