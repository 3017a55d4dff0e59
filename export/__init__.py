"""LandSeg export toolchain: build ONNX model packages (graph + LandSeg metadata)."""
