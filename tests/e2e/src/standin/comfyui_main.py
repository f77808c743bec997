"""Stand-in ComfyUI server (comfyfleet tests): the parts of ComfyUI's command line
and HTTP API an agent uses, with the Python standard library only.

It imports the venv's torch at start like ComfyUI, loads custom_nodes/*/__init__.py
(a failing node is logged and skipped), and serves GET /system_stats, GET /queue,
POST /prompt, GET /history and GET /object_info in ComfyUI's shapes. A prompt
"renders" (one at a time) until the file named by its "wait_for_file" key exists,
or for "seconds" seconds. It writes nothing outside --output-directory and
--user-directory, and exits when the directory holding this file disappears, so a
test that deletes its temporary directory leaves no process behind.
"""

import sys

# Importing torch and custom nodes must not leave __pycache__ in the venv or the
# checkout: the stand-in writes only where ComfyUI is told to.
sys.dont_write_bytecode = True

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

COMFYUI_VERSION = "0.3.64"
HERE = os.path.dirname(os.path.abspath(__file__))
# Variants of this file (tests' broken builds) replace the marked lines.
REPORTED_PYTORCH_VERSION = None  # standin: reported pytorch_version


def parse_arguments():
    parser = argparse.ArgumentParser(description="stand-in ComfyUI")
    parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--output-directory", type=str, default=None)
    parser.add_argument("--input-directory", type=str, default=None)
    parser.add_argument("--user-directory", type=str, default=None)
    parser.add_argument("--extra-model-paths-config", type=str, default=None, action="append", nargs="+")
    parser.add_argument("--use-sage-attention", action="store_true")
    arguments, unknown = parser.parse_known_args()
    return arguments, unknown


def watch_own_directory():
    while True:
        if not os.path.isdir(HERE):
            print("the ComfyUI directory is gone; exiting", flush=True)
            os._exit(3)
        time.sleep(0.25)


def load_custom_nodes():
    loaded, failed, node_classes = [], [], {}
    nodes_dir = os.path.join(HERE, "custom_nodes")
    names = sorted(os.listdir(nodes_dir)) if os.path.isdir(nodes_dir) else []
    for name in names:
        init = os.path.join(nodes_dir, name, "__init__.py")
        if not os.path.isfile(init):
            continue
        started = time.perf_counter()
        try:
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[os.path.join(nodes_dir, name)]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            for node, cls in getattr(module, "NODE_CLASS_MAPPINGS", {}).items():
                node_classes[node] = name
            loaded.append((name, time.perf_counter() - started))
        except Exception:
            traceback.print_exc()
            print(f"Cannot import {os.path.join(nodes_dir, name)} module for custom nodes", flush=True)
            failed.append(name)
    if loaded or failed:
        print("\nImport times for custom nodes:", flush=True)
        for name, seconds in loaded:
            print(f"   {seconds:6.1f} seconds: {os.path.join(nodes_dir, name)}", flush=True)
        for name in failed:
            print(f"   0.0 seconds (IMPORT FAILED): {os.path.join(nodes_dir, name)}", flush=True)
    return loaded, failed, node_classes


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
    return {
        "system": {
            "os": sys.platform,
            "ram_total": page * os.sysconf("SC_PHYS_PAGES"),
            "ram_free": page * os.sysconf("SC_AVPHYS_PAGES"),
            "comfyui_version": COMFYUI_VERSION,
            "python_version": sys.version,
            "pytorch_version": pytorch_version,
            "embedded_python": False,
            "argv": sys.argv,
        },
        "devices": [
            {
                "name": f"cuda:{index} {torch_module.cuda.get_device_name(index)} : cudaMallocAsync",
                "type": "cuda",
                "index": index,
                "vram_total": 0,
                "vram_free": 0,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
            for index in range(torch_module.cuda.device_count())
        ],
    }


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
            elif path == "/object_info":
                self.send_json({node: {"name": node, "python_module": f"custom_nodes.{module}"}
                                for node, module in node_classes.items()})
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
    arguments, unknown = parse_arguments()
    threading.Thread(target=watch_own_directory, name="watchdog", daemon=True).start()
    print(f"ComfyUI version: {COMFYUI_VERSION} (comfyfleet stand-in)", flush=True)
    if unknown:
        print(f"ignoring unknown arguments: {unknown}", flush=True)

    import torch

    print(f"pytorch version: {torch.version.__version__}", flush=True)
    if arguments.use_sage_attention:
        import sageattention  # noqa: F401  (ComfyUI fails without it when asked to use it)

        print("Using sage attention", flush=True)
    loaded, failed, node_classes = load_custom_nodes()

    output_directory = arguments.output_directory or os.path.join(HERE, "output")
    queue = PromptQueue(output_directory)
    threading.Thread(target=queue.work, name="prompt-worker", daemon=True).start()

    host = arguments.listen.split(",")[0]
    # standin: before listening
    server = ThreadingHTTPServer((host, arguments.port), make_handler(torch, queue, node_classes))
    server.daemon_threads = True
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"Starting server\n\nTo see the GUI go to: http://{shown}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
