"""Stand-in ComfyUI server (comfyfleet tests): the parts of ComfyUI's command line,
start-up and HTTP API an agent uses, with the Python standard library only.

It starts in ComfyUI's order: options (comfy/cli_args.py), the model paths
(folder_paths.py, --extra-model-paths-config, --models-directory), torch, every
custom node under custom_nodes/ (one that fails to import is logged with ComfyUI's
own lines, "Cannot import ... module for custom nodes" and "(IMPORT FAILED)", and
the server runs on without it; --disable-all-custom-nodes leaves out all but those
--whitelist-custom-nodes names, logging only that it skipped them), the database at
--database-url (app/database/db.py), and only then the routes: GET /system_stats,
/queue, /object_info (every node class with its python_module), /models,
/models/{folder}, /history and POST /prompt in ComfyUI's shapes. With
--enable-manager (a 0.33.0 checkout) it behaves as ComfyUI 0.4+ does: when the
comfyui_manager package is importable it starts it, which serves
/v2/manager/version; when it is not it logs ComfyUI's warning, turns the manager
off and runs on. It imitates the
version in comfyui_version.py: 0.3.64 logs bare messages, 0.23 and later (0.33.0)
start each record with an ANSI colour and "[LEVEL] " (app/logger.py). A prompt "renders" (one at a time) until the file
named by its "wait_for_file" key exists, or for "seconds" seconds. It writes nothing
outside --output-directory, --user-directory, --temp-directory and the database, and exits when the
directory holding this file disappears, so a test that deletes its temporary
directory leaves no process behind.
"""

import sys

# Importing torch and custom nodes must not leave __pycache__ in the venv or the
# checkout: the stand-in writes only where ComfyUI is told to.
sys.dont_write_bytecode = True

import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from comfy.cli_args import args  # noqa: E402

import comfyui_version  # noqa: E402
import folder_paths  # noqa: E402
import utils.extra_config  # noqa: E402
from app.logger import setup_logger  # noqa: E402

COMFYUI_VERSION = comfyui_version.__version__
# The first release whose log lines carry a colour and a "[LEVEL] " tag.
COLOURED_LOG_SINCE = (0, 23)
HERE = os.path.dirname(os.path.abspath(__file__))
# Variants of this file (tests' broken builds) replace the marked lines.
REPORTED_PYTORCH_VERSION = None  # standin: reported pytorch_version
# The comfyui_manager module once started (main.py's `args.enable_manager`).
MANAGER = None


def watch_own_directory():
    while True:
        if not os.path.isdir(HERE):
            print("the ComfyUI directory is gone; exiting", flush=True)
            os._exit(3)
        time.sleep(0.25)


def version_tuple(version):
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def load_custom_node(module_path, ignore, node_classes):
    """nodes.load_custom_node: True when the node registered (V1 NODE_CLASS_MAPPINGS,
    or a V3 comfy_entrypoint whose extension lists its node classes, each with a
    NODE_ID). A class named like one ComfyUI already has is ignored, as in ComfyUI."""
    module_name = os.path.basename(module_path)
    if os.path.isfile(module_path):
        module_name = os.path.splitext(module_name)[0]
        init = module_path
        search = None
    else:
        init = os.path.join(module_path, "__init__.py")
        search = [module_path]
    python_module = f"custom_nodes.{module_name}"
    try:
        spec = importlib.util.spec_from_file_location(module_path.replace(".", "_x_"), init,
                                                      submodule_search_locations=search)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is not None:
            for name, node_class in mappings.items():
                if name not in ignore:
                    node_classes[name] = (node_class, python_module)
            return True
        if hasattr(module, "comfy_entrypoint"):
            try:
                extension = module.comfy_entrypoint()
                if not hasattr(extension, "get_node_list"):
                    logging.warning(f"comfy_entrypoint in {module_path} did not return a ComfyExtension, skipping.")
                    return False
                for node_class in extension.get_node_list():
                    if node_class.NODE_ID not in ignore:
                        node_classes[node_class.NODE_ID] = (node_class, python_module)
                return True
            except Exception as e:
                logging.warning(f"Error while calling comfy_entrypoint in {module_path}: {e}")
                return False
        need = "comfy_entrypoint" if version_tuple(COMFYUI_VERSION) >= COLOURED_LOG_SINCE else "NODES_LIST"
        logging.warning(f"Skip {module_path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS or {need} (need one).")
        return False
    except Exception as e:
        logging.warning(traceback.format_exc())
        logging.warning(f"Cannot import {module_path} module for custom nodes: {e}")
        return False


def init_external_custom_nodes(node_classes):
    """nodes.init_external_custom_nodes, with its log lines."""
    base_node_names = set(node_classes)
    nodes_dir = os.path.join(HERE, "custom_nodes")
    import_times = []
    for possible_module in os.listdir(nodes_dir) if os.path.isdir(nodes_dir) else []:
        if possible_module == "__pycache__":
            continue
        module_path = os.path.join(nodes_dir, possible_module)
        if os.path.isfile(module_path) and os.path.splitext(module_path)[1] != ".py":
            continue
        if module_path.endswith(".disabled"):
            continue
        if args.disable_all_custom_nodes and possible_module not in args.whitelist_custom_nodes:
            logging.info(f"Skipping {possible_module} due to disable_all_custom_nodes and whitelist_custom_nodes")
            continue
        started = time.perf_counter()
        success = load_custom_node(module_path, base_node_names, node_classes)
        import_times.append((time.perf_counter() - started, module_path, success))
    if import_times:
        logging.info("\nImport times for custom nodes:")
        for seconds, module_path, success in sorted(import_times):
            message = "" if success else " (IMPORT FAILED)"
            logging.info("{:6.1f} seconds{}: {}".format(seconds, message, module_path))
        logging.info("")


class CheckpointLoaderSimple:
    """A node ComfyUI itself defines (python_module "nodes")."""
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    CATEGORY = "loaders"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}


def apply_custom_paths():
    """main.apply_custom_paths: the model paths files, checkout's own first."""
    own = os.path.join(HERE, "extra_model_paths.yaml")
    if os.path.isfile(own):
        utils.extra_config.load_extra_path_config(own)
    for config_path in itertools.chain(*(args.extra_model_paths_config or [])):
        utils.extra_config.load_extra_path_config(config_path)
    if getattr(args, "models_directory", None):
        logging.info(f"Setting models directory to: {folder_paths.models_dir}")


def setup_database():
    """main.setup_database: a database that cannot be brought up is logged, not fatal."""
    try:
        from app.database.db import init_db

        init_db()
    except Exception as e:
        logging.error(f"Failed to initialize database. Please ensure you have installed the latest requirements. If the error persists, please report this as in future the database will be required: {e}")


class PromptQueue:
    """ComfyUI's queue: items are [number, prompt_id, prompt, extra_data, outputs_to_execute]."""

    def __init__(self, output_directory):
        self.condition = threading.Condition()
        self.pending = []
        self.running = []
        self.history = {}
        self.number = 0
        self.output_directory = output_directory

    def put(self, prompt, client_id):
        with self.condition:
            prompt_id = str(uuid.uuid4())
            item = [self.number, prompt_id, prompt, {"client_id": client_id}, []]
            self.number += 1
            self.pending.append(item)
            self.condition.notify_all()
            return item

    def snapshot(self):
        with self.condition:
            return {"queue_running": list(self.running), "queue_pending": list(self.pending)}

    def work(self):
        while True:
            with self.condition:
                while not self.pending:
                    self.condition.wait()
                item = self.pending.pop(0)
                self.running.append(item)
            self.render(item)
            with self.condition:
                self.running.remove(item)
                self.history[item[1]] = {
                    "prompt": item,
                    "outputs": {},
                    "status": {"status_str": "success", "completed": True, "messages": []},
                }

    def render(self, item):
        prompt = item[2]
        wait_for_file = prompt.get("wait_for_file")
        deadline = time.monotonic() + float(prompt.get("seconds", 0))
        while (wait_for_file and not os.path.exists(wait_for_file)) or time.monotonic() < deadline:
            time.sleep(0.05)
        os.makedirs(self.output_directory, exist_ok=True)
        with open(os.path.join(self.output_directory, f"ComfyUI_{item[0]:05}_.txt"), "w") as output:
            output.write(item[1] + "\n")


def system_stats(torch_module):
    pytorch_version = REPORTED_PYTORCH_VERSION or torch_module.version.__version__
    page = os.sysconf("SC_PAGE_SIZE")
    available = torch_module.cuda.is_available()
    name = torch_module.cuda.get_device_name(0) if available else "cpu"
    return {
        "system": {
            "os": os.name,
            "ram_total": page * os.sysconf("SC_PHYS_PAGES"),
            "ram_free": page * os.sysconf("SC_AVPHYS_PAGES"),
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": sys.version,
            "pytorch_version": pytorch_version,
            "embedded_python": False,
            "argv": sys.argv,
            # Not in ComfyUI's answer: which GPUs this process was given, for tests.
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"),
        },
        # ComfyUI reports the one device it renders on.
        "devices": [
            {
                "name": f"cuda:0 {name} : cudaMallocAsync" if available else "cpu",
                "type": "cuda" if available else "cpu",
                "index": 0 if available else None,
                "vram_total": 0,
                "vram_free": 0,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        ],
    }


def node_info(name, node_class, module):
    """server.node_info for a V1 node: a class without INPUT_TYPES or RETURN_TYPES
    cannot be described, and /object_info leaves it out."""
    inputs = node_class.INPUT_TYPES()
    outputs = list(node_class.RETURN_TYPES)
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": outputs,
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": module,
        "category": getattr(node_class, "CATEGORY", "sd"),
        "output_node": bool(getattr(node_class, "OUTPUT_NODE", False)),
    }


def object_info(node_classes):
    """server.get_object_info: a node that cannot be described is logged and left out."""
    out = {}
    for name, (node_class, module) in node_classes.items():
        try:
            out[name] = node_info(name, node_class, module)
        except Exception:
            logging.error(f"[ERROR] An error occurred while retrieving information for the '{name}' node.")
            logging.error(traceback.format_exc())
    return out


def handle_comfyui_manager_unavailable():
    """ComfyUI 0.33.0's main.py: warn with the install command, turn the manager off."""
    manager_req_path = os.path.join(HERE, "manager_requirements.txt")
    pip_cmd = f"{sys.executable} -m pip install -r {manager_req_path}"
    msg = f"\n\nTo use the `--enable-manager` feature, the `comfyui-manager` package must be installed first.\ncommand:\n\t{pip_cmd}"
    msg += "\n"
    logging.warning(msg)
    args.enable_manager = False


def start_manager():
    global MANAGER
    if not getattr(args, "enable_manager", False):
        return
    if importlib.util.find_spec("comfyui_manager"):
        import comfyui_manager

        logging.info("[START] ComfyUI-Manager")
        MANAGER = comfyui_manager
    else:
        handle_comfyui_manager_unavailable()


def make_handler(torch_module, queue, node_classes):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            pass

        def send_json(self, value, status=200):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/system_stats":
                self.send_json(system_stats(torch_module))
            elif path == "/queue":
                self.send_json(queue.snapshot())
            elif path == "/history":
                with queue.condition:
                    self.send_json(dict(queue.history))
            elif path.startswith("/history/"):
                prompt_id = path[len("/history/"):]
                with queue.condition:
                    found = queue.history.get(prompt_id)
                self.send_json({prompt_id: found} if found else {})
            elif path == "/v2/manager/version" and MANAGER is not None:
                body = MANAGER.__version__.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif path == "/object_info":
                self.send_json(object_info(node_classes))
            elif path == "/models":
                self.send_json(list(folder_paths.folder_names_and_paths.keys()))
            elif path.startswith("/models/"):
                folder = path[len("/models/"):]
                if folder in folder_paths.folder_names_and_paths:
                    self.send_json(folder_paths.get_filename_list(folder))
                else:
                    self.send_json({"error": "not found"}, 404)
            else:
                self.send_json({"error": "not found"}, 404)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length) if length else b""
            if self.path.split("?")[0] != "/prompt":
                self.send_json({"error": "not found"}, 404)
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self.send_json({"error": {"type": "invalid_prompt", "message": "not JSON"}, "node_errors": {}}, 400)
                return
            prompt = body.get("prompt") if isinstance(body, dict) else None
            if not isinstance(prompt, dict):
                error = {"type": "no_prompt", "message": "No prompt provided", "details": "", "extra_info": {}}
                self.send_json({"error": error, "node_errors": {}}, 400)
                return
            item = queue.put(prompt, body.get("client_id"))
            self.send_json({"prompt_id": item[1], "number": item[0], "node_errors": {}})

    return Handler


def main():
    setup_logger(coloured=version_tuple(COMFYUI_VERSION) >= COLOURED_LOG_SINCE)
    apply_custom_paths()
    threading.Thread(target=watch_own_directory, name="watchdog", daemon=True).start()
    logging.info("Python version: {}".format(sys.version))
    logging.info(f"ComfyUI version: {COMFYUI_VERSION} (comfyfleet stand-in)")

    import torch

    logging.info(f"pytorch version: {torch.version.__version__}")
    start_manager()
    if args.use_sage_attention:
        import sageattention  # noqa: F401  (ComfyUI fails without it when asked to use it)

        logging.info("Using sage attention")
    # ComfyUI's order: custom nodes, then the database, then the routes.
    node_classes = {"CheckpointLoaderSimple": (CheckpointLoaderSimple, "nodes")}
    if not args.disable_all_custom_nodes or args.whitelist_custom_nodes:
        init_external_custom_nodes(node_classes)
    else:
        logging.info("Skipping loading of custom nodes")
    setup_database()
    if args.temp_directory:
        # ComfyUI's temp directory is "temp" under the one it is given.
        os.makedirs(os.path.join(os.path.abspath(args.temp_directory), "temp"), exist_ok=True)

    output_directory = args.output_directory or os.path.join(HERE, "output")
    queue = PromptQueue(output_directory)
    threading.Thread(target=queue.work, name="prompt-worker", daemon=True).start()

    host = args.listen.split(",")[0]
    # standin: before listening
    server = ThreadingHTTPServer((host, args.port), make_handler(torch, queue, node_classes))
    server.daemon_threads = True
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    logging.info(f"Starting server\n\nTo see the GUI go to: http://{shown}:{server.server_address[1]}")
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
