"""Evaluation of runs and exported artifacts: metrics with bootstrap intervals, paired comparisons."""
