"""worker.bus"""
