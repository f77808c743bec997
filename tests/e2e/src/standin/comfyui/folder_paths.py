"""Stand-in folder_paths.py (comfyfleet tests): where ComfyUI keeps user files and
models. Its model folder types are ComfyUI 0.3.64's, written as ComfyUI writes them
(folder_names_and_paths["..."] = ([os.path.join(models_dir, "...")], ...)); a
0.33.0 checkout (StandinComfyui::commit_version) adds 0.33.0's and takes
--models-directory. Paths added from extra_model_paths.yaml, legacy names, the
search order and the listing (recursive, by extension) are ComfyUI's. Unlike
ComfyUI it creates no directory: the stand-in writes only where it is told to."""
import os

from comfy.cli_args import args

supported_pt_extensions = {'.ckpt', '.pt', '.pt2', '.bin', '.pth', '.safetensors', '.pkl', '.sft'}

folder_names_and_paths = {}

base_path = os.path.dirname(os.path.realpath(__file__))

models_dir = os.path.join(base_path, "models")  # standin: models_dir
folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_pt_extensions)
folder_names_and_paths["configs"] = ([os.path.join(models_dir, "configs")], [".yaml"])

folder_names_and_paths["loras"] = ([os.path.join(models_dir, "loras")], supported_pt_extensions)
folder_names_and_paths["vae"] = ([os.path.join(models_dir, "vae")], supported_pt_extensions)
folder_names_and_paths["text_encoders"] = ([os.path.join(models_dir, "text_encoders"), os.path.join(models_dir, "clip")], supported_pt_extensions)
folder_names_and_paths["diffusion_models"] = ([os.path.join(models_dir, "unet"), os.path.join(models_dir, "diffusion_models")], supported_pt_extensions)
folder_names_and_paths["clip_vision"] = ([os.path.join(models_dir, "clip_vision")], supported_pt_extensions)
folder_names_and_paths["style_models"] = ([os.path.join(models_dir, "style_models")], supported_pt_extensions)
folder_names_and_paths["embeddings"] = ([os.path.join(models_dir, "embeddings")], supported_pt_extensions)
folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], ["folder"])
folder_names_and_paths["vae_approx"] = ([os.path.join(models_dir, "vae_approx")], supported_pt_extensions)

folder_names_and_paths["controlnet"] = ([os.path.join(models_dir, "controlnet"), os.path.join(models_dir, "t2i_adapter")], supported_pt_extensions)
folder_names_and_paths["gligen"] = ([os.path.join(models_dir, "gligen")], supported_pt_extensions)

folder_names_and_paths["upscale_models"] = ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions)

folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())

folder_names_and_paths["hypernetworks"] = ([os.path.join(models_dir, "hypernetworks")], supported_pt_extensions)

folder_names_and_paths["photomaker"] = ([os.path.join(models_dir, "photomaker")], supported_pt_extensions)

folder_names_and_paths["classifiers"] = ([os.path.join(models_dir, "classifiers")], {""})

folder_names_and_paths["model_patches"] = ([os.path.join(models_dir, "model_patches")], supported_pt_extensions)

folder_names_and_paths["audio_encoders"] = ([os.path.join(models_dir, "audio_encoders")], supported_pt_extensions)
# standin: later folders


def get_user_directory():
    return os.path.abspath(args.user_directory or os.path.join(base_path, "user"))


def map_legacy(folder_name):
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    folder_name = map_legacy(folder_name)
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def recursive_search(directory, excluded_dir_names):
    if not os.path.isdir(directory):
        return []
    found = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded_dir_names]
        found.extend(os.path.relpath(os.path.join(dirpath, name), directory) for name in filenames)
    return found


def get_filename_list(folder_name):
    """Every model file of a folder type, relative to its directory, by extension."""
    paths, extensions = folder_names_and_paths[map_legacy(folder_name)]
    found = set()
    for path in paths:
        for name in recursive_search(path, [".git"]):
            if os.path.splitext(name)[-1].lower() in extensions or len(extensions) == 0:
                found.add(name)
    return sorted(found)
