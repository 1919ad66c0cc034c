"""The beds faults run on: the two-namespace testbed, the seed lab, the cluster."""
