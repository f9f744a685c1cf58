"""Lesions of one visit: connected components, location classes, McDonald 2017 dissemination in
space, lesion features, visit records.
"""
