"""FlowerTune LLM entry with fedlora's FlexLoRA: heterogeneous LoRA ranks over a quantized base."""
