"""Stand-in comfy/cli_args.py (comfyfleet tests): the options an agent passes, with
ComfyUI 0.3.64's defaults (and 0.33.0's --models-directory in a 0.33.0 checkout,
StandinComfyui::commit_version). Unknown options are an error, as in ComfyUI."""
import argparse
import os

parser = argparse.ArgumentParser(description="stand-in ComfyUI")
parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--output-directory", type=str, default=None)
parser.add_argument("--input-directory", type=str, default=None)
parser.add_argument("--user-directory", type=str, default=None)
parser.add_argument("--temp-directory", type=str, default=None)
parser.add_argument("--extra-model-paths-config", type=str, default=None, action="append", nargs="+")
parser.add_argument("--use-sage-attention", action="store_true")
parser.add_argument("--preview-method", type=str, default="none")
parser.add_argument("--disable-all-custom-nodes", action="store_true")
parser.add_argument("--whitelist-custom-nodes", type=str, nargs="+", default=[],
                    help="Specify custom node folders to load even when --disable-all-custom-nodes is enabled.")
# standin: later options

database_default_path = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "user", "comfyui.db"))
parser.add_argument("--database-url", type=str, default=f"sqlite:///{database_default_path}",
                    help="Specify the database URL, e.g. for an in-memory database you can use 'sqlite:///:memory:'.")

args = parser.parse_args()
