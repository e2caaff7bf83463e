"""Labelling your own images before training (a local tool, not part of the Space).

store  labels.csv, the queue of images still to label, the stratified export to an image-folder tree
app    the Gradio labelling app and its command line (python -m vision_ensemble.labeling FOLDER --classes a,b)
"""
