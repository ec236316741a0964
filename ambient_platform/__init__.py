"""Shared platform layer: settings, config schemas, storage (local + s3://), tracking, Ray runtime.

Sits above ``ambient_core`` (pure numpy + torch) and below ``jobs`` (units of work) and
``orchestrator`` (control plane). It never imports either of them.
"""
