"""worker.pipeline"""
