"""fedlora.eval"""
