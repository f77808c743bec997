"""Stand-in folder_paths.py (comfyfleet tests): where ComfyUI keeps user files."""
import os

from comfy.cli_args import args

base_path = os.path.dirname(os.path.realpath(__file__))


def get_user_directory():
    return os.path.abspath(args.user_directory or os.path.join(base_path, "user"))
