# Stand-in comfyui_version.py (comfyfleet tests): the version this ComfyUI imitates.
# Its log format and model folders follow it (StandinComfyui::commit_version).
__version__ = "0.3.64"
