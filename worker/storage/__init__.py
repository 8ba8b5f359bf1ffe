"""worker.storage"""
