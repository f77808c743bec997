# comfyfleet's verification, run by the environment's own Python (`python -I`): what
# torch really is in this venv, and whether each optimisation imports. Prints one
# line, "COMFYFLEET-VERIFY <json>", whatever happens; everything else is noise.
import importlib
import importlib.metadata
import json
import sys

request = json.loads(sys.argv[1])
result = {"python": sys.version.split()[0], "torch": None, "torch_error": None, "optimizations": {}}

try:
    import torch

    facts = {"version": str(torch.__version__), "cuda": getattr(torch.version, "cuda", None)}
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["arch_list"] = [str(arch) for arch in torch.cuda.get_arch_list()]
        facts["device_count"] = int(torch.cuda.device_count())
    except Exception as error:  # a broken driver: say so, do not crash
        facts["cuda_error"] = f"{type(error).__name__}: {error}"
        facts.setdefault("arch_list", [])
    result["torch"] = facts
except BaseException as error:
    result["torch_error"] = f"{type(error).__name__}: {error}"

for item in request["optimizations"]:
    outcome = {"ok": False, "error": None, "version": None}
    try:
        module = importlib.import_module(item["import"])
        outcome["ok"] = True
        outcome["module_version"] = str(getattr(module, "__version__", "") or "")
    except BaseException as error:
        outcome["error"] = f"{type(error).__name__}: {error}"
    try:
        outcome["version"] = importlib.metadata.version(item["distribution"])
    except Exception:
        pass
    result["optimizations"][item["name"]] = outcome

print("COMFYFLEET-VERIFY " + json.dumps(result), flush=True)
