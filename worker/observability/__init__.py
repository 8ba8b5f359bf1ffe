"""worker.observability"""
