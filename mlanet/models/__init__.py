"""Networks: MLANet backbones with coordinate attention and cross-stage attentional fusion, the registry."""
