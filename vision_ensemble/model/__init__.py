"""Model: a timm backbone created for a dataset, exported in timm's Hub format and loaded back; a member (a
network with its own preprocessing) run eagerly or through ONNX Runtime.

timm_model  timm creation (pretrained or local weights), export in timm's Hub format, loading it back
member      `Member`: a loaded network with its preprocessing, from a folder or a Hub repo; its probabilities
runtime     one network to ONNX and a CPU ONNX Runtime session (below the ensemble and the exporter)
airbench    a fast small-image network family registered with timm (airbench_s/m/l/95/96): importing this package
            registers the names, so timm.create_model builds them like any backbone
"""

from . import airbench  # registers the airbench names with timm before anything creates or loads a model

from .member import Member
from .timm_model import (ModelError, create_model, export_model, load_model_folder, read_model_config,
                         training_data_config)
