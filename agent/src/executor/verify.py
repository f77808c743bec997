# comfyfleet's verification, run by the environment's own Python (`python -I`): what
# torch really is in this venv, whether each optimisation imports, and whether its
# kernels run: the optimisation's smoke call, made on every GPU. Prints one line,
# "COMFYFLEET-VERIFY <json>", whatever happens; everything else is noise.
import importlib
import importlib.metadata
import json
import sys

request = json.loads(sys.argv[1])
result = {"python": sys.version.split()[0], "torch": None, "torch_error": None, "optimizations": {}}
torch = None

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


def smoke(function, inputs, index):
    """One call of the optimisation's kernels on GPU `index`; None when it ran."""
    try:
        device = torch.device("cuda", index)
        torch.cuda.set_device(index)
        if inputs == "device":
            function(device)
        else:
            # (batch, heads, tokens, head dim): the layout attention kernels take by default.
            q, k, v = (torch.randn(1, 2, 128, 64, dtype=torch.float16, device=device) for _ in range(3))
            out = function(q, k, v)
            if tuple(out.shape) != tuple(q.shape):
                return f"returned shape {tuple(out.shape)}, not {tuple(q.shape)}"
            if not bool(torch.isfinite(out).all()):
                return "returned non-finite values"
        torch.cuda.synchronize(device)
        return None
    except BaseException as error:
        return f"{type(error).__name__}: {error}"


for item in request["optimizations"]:
    outcome = {"ok": False, "error": None, "version": None, "smoke": []}
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
    call = item.get("smoke")
    if outcome["ok"] and call:
        module_name, _, function_name = call["call"].rpartition(".")
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except BaseException as error:
            function = None
            failure = f"cannot load {call['call']}: {type(error).__name__}: {error}"
        for index in range(request["gpus"]):
            if function is None:
                error = failure
            elif torch is None:
                error = "torch does not import"
            else:
                error = smoke(function, call.get("inputs", "attention"), index)
            outcome["smoke"].append({"gpu": index, "error": error})
    result["optimizations"][item["name"]] = outcome

print("COMFYFLEET-VERIFY " + json.dumps(result), flush=True)
