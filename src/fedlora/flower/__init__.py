"""fedlora.flower"""
