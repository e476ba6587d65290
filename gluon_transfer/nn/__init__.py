"""Reusable HybridBlocks: fusion (AFF/iAFF/MS-CAM) and its fused CPU kernel, AFS gates, feature taps."""
