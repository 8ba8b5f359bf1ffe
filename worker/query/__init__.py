"""worker.query"""
