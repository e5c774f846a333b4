"""GPT-2 weights (gpt2, -medium, -large, -xl) from a Hugging Face checkpoint folder into bigmodel's GPT.

The folder holds `config.json` and `model.safetensors` or `pytorch_model.bin` (a `save_pretrained`
folder or a hub snapshot); nothing is downloaded. GPT-2 is bigmodel's GPT with biases, GELU's tanh
approximation and LayerNorm eps from config.json; its Conv1D layers store weights as (in, out), so
they are transposed into nn.Linear's (out, in). The output head is tied to the token embedding.
"""

import json
import logging
from pathlib import Path

import torch

from bigmodel.config import ConfigError

log = logging.getLogger("bigmodel")
SIZES = {"gpt2": None, "gpt2-medium": (24, 1024), "gpt2-large": (36, 1280), "gpt2-xl": (48, 1600)}
WHERE = (
    "a folder with a Hugging Face GPT-2 checkpoint (config.json and model.safetensors or "
    "pytorch_model.bin); nothing is downloaded at run time: get one with `hf download "
    "openai-community/gpt2 config.json model.safetensors vocab.json --local-dir DIR` (or gpt2-medium, "
    "-large, -xl), or "
    "GPT2LMHeadModel.from_pretrained('gpt2').save_pretrained(DIR)"
)
GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}  # config.json activation -> GPT's gelu
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
RENAME = {
    "ln_1": "ln1",
    "ln_2": "ln2",
    "attn.c_attn": "attn.qkv",
    "attn.c_proj": "attn.proj",
    "mlp.c_fc": "mlp.up",
    "mlp.c_proj": "mlp.down",
}


def read_config(path: str | Path | None, init_from: str = "gpt2", key: str = "model.pretrained_path") -> dict:
    """GPT arguments (vocab_size, n_positions as block_size, n_layer, n_head, n_embd, gelu, norm_eps)."""
    if init_from not in SIZES:
        raise ConfigError(f"model.init_from={init_from!r} is not valid; use one of {list(SIZES)} (or null)")
    if not path:
        raise ConfigError(f"model.init_from={init_from} needs model.pretrained_path=DIR: {WHERE}")
    file = Path(path).expanduser() / "config.json"
    if not file.is_file():
        raise ConfigError(f"{key}={str(path)!r} has no config.json: it should be {WHERE}")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
        args = {
            "vocab_size": int(hf["vocab_size"]),
            "block_size": int(hf["n_positions"]),
            "n_layer": int(hf["n_layer"]),
            "n_head": int(hf["n_head"]),
            "n_embd": int(hf["n_embd"]),
            "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        }
        activation = hf.get("activation_function", "gelu_new")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    if bad := [k for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd") if args[k] < 1]:
        raise ConfigError(f"{file}: {bad} must be positive: not a GPT-2 config.json")
    if args["n_embd"] % args["n_head"]:
        raise ConfigError(f"{file}: n_embd={args['n_embd']} is not a multiple of n_head={args['n_head']}")
    if (
        hf.get("model_type", "gpt2") != "gpt2"
        or activation not in GELU
        or hf.get("n_inner") not in (None, 4 * args["n_embd"])
    ):
        raise ConfigError(
            f"{file}: model_type {hf.get('model_type')!r}, activation {activation!r}, n_inner "
            f"{hf.get('n_inner')!r}: only GPT-2 (gelu_new, n_inner null) checkpoints load"
        )
    if SIZES[init_from] and SIZES[init_from] != (args["n_layer"], args["n_embd"]):
        raise ConfigError(
            f"model.init_from={init_from}, but {file} describes {args['n_layer']} layers of "
            f"width {args['n_embd']}: point model.pretrained_path at a {init_from} folder"
        )
    return args | {"gelu": GELU[activation]}


def read_weights(path: str | Path, key: str = "model.pretrained_path") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: model.safetensors (safetensors package) or pytorch_model.bin (tensors only)."""
    folder = Path(path).expanduser()
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                "reading model.safetensors needs the safetensors package: "
                "pip install 'bigmodel[gpt2]' (or pip install safetensors)"
            ) from None
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as e:  # truncated or not a safetensors file
            raise ConfigError(f"{folder / 'model.safetensors'}: cannot be read ({type(e).__name__}: {e})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign pickle is refused by weights_only, without running it
            raise ConfigError(
                f"{folder / 'pytorch_model.bin'}: not a tensors-only checkpoint "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
    raise ConfigError(f"{key}={str(path)!r} has neither model.safetensors nor pytorch_model.bin: it should be {WHERE}")


def convert(
    hf: dict[str, torch.Tensor], block_size: int, where: str = "the GPT-2 checkpoint"
) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 names and layouts -> GPT's state dict (position table cut to block_size)."""
    try:
        return _convert(hf, block_size)
    except (ValueError, RuntimeError, IndexError) as e:  # a name or a tensor of another layout
        raise ConfigError(f"{where}: not GPT-2 weights ({type(e).__name__}: {str(e)[:200]})") from None


def _convert(hf: dict[str, torch.Tensor], block_size: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight":
            continue  # tied to wte
        if name.endswith(CONV1D):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        if name.startswith("h."):
            _, layer, rest = name.split(".", 2)
            if rest in ("attn.bias", "attn.masked_bias"):
                continue  # the causal-mask buffers of older files
            for old, new in RENAME.items():
                rest = new + rest[len(old) :] if rest.startswith(old) else rest
            name = f"blocks.{layer}.{rest}"
        name = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight"}.get(name, name)
        state[name] = tensor.contiguous()
    if "tok_emb.weight" not in state or "pos_emb.weight" not in state:
        raise ConfigError("the GPT-2 checkpoint has no wte.weight / wpe.weight: not GPT-2 weights")
    state["pos_emb.weight"] = state["pos_emb.weight"][:block_size]
    state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def architecture(init_from: str, path: str | Path | None, vocab_size: int, block_size: int) -> dict:
    """The GPT arguments for a GPT-2 checkpoint, checked against the data's vocabulary and block_size."""
    args = read_config(path, init_from)
    if vocab_size != args["vocab_size"]:
        raise ConfigError(
            f"model.init_from={init_from}: the data's vocabulary has {vocab_size} tokens, the "
            f"checkpoint's {args['vocab_size']}; use data.tokenizer=bpe (GPT-2's BPE)"
        )
    if block_size > args["block_size"]:
        raise ConfigError(
            f"model.block_size={block_size} is longer than the checkpoint's {args['block_size']} "
            f"positions; use model.block_size <= {args['block_size']}"
        )
    log.info(
        f"model.init_from={init_from}: {args['n_layer']} layers, {args['n_head']} heads, width "
        f"{args['n_embd']}, block_size {block_size} of {args['block_size']} positions, from {path}"
    )
    return args | {"block_size": block_size, "bias": True}


def load_pretrained(path: str | Path, block_size: int | None = None, key: str = "ckpt_path"):
    """A GPT in eval mode with the weights of the GPT-2 checkpoint in `path` (all its positions by default)."""
    from bigmodel.models.gpt import GPT

    args = read_config(path, key=key)
    args["block_size"] = block_size or args["block_size"]
    from bigmodel.checkpoint import load_model_state

    hf = read_weights(path, key)
    state = convert(hf, args["block_size"], str(path))
    table = tuple(state["tok_emb.weight"].shape)
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if table != (args["vocab_size"], args["n_embd"]) or layers != args["n_layer"]:  # before building the model
        raise ConfigError(
            f"{str(path)!r}: config.json describes {args['n_layer']} layers and a {args['vocab_size']} x "
            f"{args['n_embd']} token table, the weights {layers} layers and {table}: they do not belong together"
        )
    model = GPT(**args)
    load_model_state(model, state, str(path))  # misfits in one line
    return model.eval()


def byte_decoder() -> dict[str, int]:
    """GPT-2's vocab.json writes each byte as a printable character: printable bytes (not space) as
    themselves, the others as chr(256 + n) in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def pretrained_tokenizer(path: str | Path):
    """GPT-2's BPE: from the folder's vocab.json when it has one (no download; GPT-2's token ids are
    its merge ranks), else tiktoken's "gpt2" encoding (downloaded once by tiktoken, then cached)."""
    from bigmodel.data.tokenizers import BPETokenizer

    file = Path(path).expanduser() / "vocab.json"
    if not file.is_file():
        return BPETokenizer("gpt2")
    try:
        import tiktoken
        from tiktoken_ext.openai_public import r50k_pat_str
    except ImportError:
        raise ConfigError("GPT-2's tokenizer needs tiktoken: pip install 'bigmodel[bpe]'") from None
    decode, special = byte_decoder(), {}
    ranks: dict[bytes, int] = {}
    try:
        for token, rank in json.loads(file.read_text(encoding="utf-8")).items():
            if token.startswith("<|") and token.endswith("|>"):
                special[token] = rank
            else:
                ranks[bytes(decode[c] for c in token)] = rank
        enc = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens=special)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{file}: not a GPT-2 vocab.json ({type(e).__name__}: {e})") from None
    tok = BPETokenizer("gpt2", enc.n_vocab)
    tok._enc = enc  # the encoding tiktoken's "gpt2" builds from the same vocabulary
    return tok
