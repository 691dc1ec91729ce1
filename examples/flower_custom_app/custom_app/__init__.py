"""A user's own Flower app that runs fedlora's FlexLoRA (examples/flower_custom_app)."""
