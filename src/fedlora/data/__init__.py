"""fedlora.data"""
