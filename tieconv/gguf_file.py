"""GGUF (llama.cpp) files through the `gguf` package: read tensor descriptions, rewrite with tensors dropped or added.

GGUF carries no tie flag; llama.cpp falls back to `token_embd.weight` when `output.weight`
is absent, so the no-config rule of `inspect` applies.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CorruptFileError, OutputError

EMBED = "token_embd.weight"
HEAD = "output.weight"


def llama_cpp_head_rule(arch: str | None) -> str | None:
    """Why llama.cpp cannot load a GGUF of `arch` without output.weight, or None where it falls back.

    The lists are data read from llama.cpp's loader source (tieconv/data/llamacpp_output.json): an
    architecture that any read version requires the head for is refused, to be safe across builds.
    """
    import json
    from importlib import resources

    rules = json.loads(resources.files("tieconv").joinpath("data/llamacpp_output.json").read_text())
    if arch in rules["requires_output"]:
        return f"llama.cpp's {arch} loader requires output.weight (it does not fall back to token_embd.weight)"
    older = rules["required_before_fallback_was_added"].get(arch or "")
    if older:
        return f"{older} requires output.weight for {arch}"
    return None


def architecture(path: Path) -> str | None:
    """The GGUF's general.architecture, or None."""
    import gguf

    try:
        field = gguf.GGUFReader(path, "r").get_field(gguf.Keys.General.ARCHITECTURE)
        return str(field.contents()) if field is not None else None
    except Exception:  # noqa: BLE001 - read_tensors reports unreadable files
        return None


def read_tensors(path: Path):
    """[(name, type name, shape, nbytes, absolute data offset)] of the GGUF file at `path`."""
    try:
        import gguf

        reader = gguf.GGUFReader(path, "r")
        out = []
        for t in reader.tensors:
            out.append((t.name, t.tensor_type.name, tuple(int(d) for d in t.shape), int(t.n_bytes), int(t.data_offset)))
        size = path.stat().st_size
        for name, _, _, nbytes, offset in out:
            if offset + nbytes > size:
                raise CorruptFileError(f"{path}: tensor {name!r} runs past the end of the file")
        return out
    except CorruptFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - the gguf reader raises many kinds of errors on bad files
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path}: not a readable GGUF file ({detail})") from None


def load_tensor(path: Path, name: str):
    """A tensor of the GGUF file as float32 torch (quantized types dequantized by gguf)."""
    import gguf
    import numpy as np
    import torch

    reader = gguf.GGUFReader(path, "r")
    (t,) = [t for t in reader.tensors if t.name == name]
    values = gguf.quants.dequantize(t.data, t.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy: the map is read-only


def write(src: Path, dst: Path, tensors: list[tuple[str, str]]) -> None:
    """Write `dst`: every metadata field of `src` unchanged, tensors `[(name, source name)]` in that order."""
    import gguf

    reader = gguf.GGUFReader(src, "r")
    by_name = {t.name: t for t in reader.tensors}
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field is not None else "llama"
    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    try:
        # the metadata copy follows gguf's own gguf_new_metadata script
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            if field.name == gguf.Keys.General.ALIGNMENT:
                # add_key_value would write the field but keep padding to the default 32 bytes: readers
                # then look for the data at the wrong offsets
                writer.add_custom_alignment(int(field.contents()))
                continue
            val_type = field.types[0]
            sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)
        for name, source in tensors:
            t = by_name[source]
            writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, source in tensors:
            writer.write_tensor_data(by_name[source].data, tensor_endianess=reader.endianess)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OutputError(f"{dst}: could not write GGUF ({exc})") from None
    finally:
        writer.close()
