"""RoboTwin 2.0 policy module: copy or symlink this folder to RoboTwin's `policy/<name>/`.

RoboTwin's `script/eval_policy.py` does `importlib.import_module(policy_name)` and looks up these four names.
"""
from .deploy_policy import encode_obs, eval, get_model, reset_model

__all__ = ["get_model", "eval", "reset_model", "encode_obs"]
