"""Diagnostics of trained runs: per-sample predictions, the error matrix (paper Figure 5),
linear probes (Appendix A.1) and per-modality contributions. Import work stays in the
submodules."""
