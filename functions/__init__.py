"""radflow.functions"""
