"""Interference analysis (paper Sec. 5): perturbed-sentence similarity and intra-sentence token homogeneity."""
