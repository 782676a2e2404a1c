"""radflow.engine"""
