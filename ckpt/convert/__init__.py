"""`ckpt convert`: kedge, PyTorch DCP, torch.save and safetensors in and out, one chunk at a time.

Modules: `base` (the TensorSource/TensorSink seam), one module per format (`dcp`, `torch_file`,
`safetensors_file`, `kedge_format`), `formats` (detection and the registry), `pipeline` (select,
rename, cast, verify, commit) and `staging` (atomic local outputs). Nothing here imports torch
at import time.
"""
