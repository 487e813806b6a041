"""Fused drop-in modules: FastDiT and FastOobleckDecoder."""
