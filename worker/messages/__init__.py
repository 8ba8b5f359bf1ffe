"""worker.messages"""
