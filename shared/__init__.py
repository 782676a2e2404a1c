"""radflow.shared"""
