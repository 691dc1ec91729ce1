"""fedlora.engine"""
