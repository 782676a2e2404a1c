"""radflow.adapter"""
