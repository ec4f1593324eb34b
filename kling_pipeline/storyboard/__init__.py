"""Stage 1: the storyboard file to rendered, keyed requests: YAML with places, the models,
templates in a sandbox, endpoints and images.
"""
