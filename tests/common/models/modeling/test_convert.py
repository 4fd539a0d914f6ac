"""The GGUF conversion's one parse: within a conversion every reader of one file is the same parsed object."""

from __future__ import annotations

import gguf
import numpy as np

from common.models.modeling.convert import _parsed_once


def _tiny_gguf(path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_conversion_parses_each_file_once_and_restores_gguf(tmp_path):
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    _tiny_gguf(first)
    _tiny_gguf(second)
    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _parsed_once():
        from gguf import GGUFReader, get_tensor_name_map  # as transformers imports them, at call time

        one = GGUFReader(first)
        assert GGUFReader(str(first)) is one and GGUFReader(second) is not one
        assert one.fields["llama.block_count"].contents() == 2 and one.tensors[0].name == "token_embd.weight"
        arch = gguf.MODEL_ARCH.LLAMA
        assert get_tensor_name_map(arch, 2) is get_tensor_name_map(arch, 2)
        assert get_tensor_name_map(arch, 2).get_name("model.embed_tokens") == "token_embd"
    assert gguf.GGUFReader is real_reader and gguf.get_tensor_name_map is real_name_map
    again, other = gguf.GGUFReader(first), gguf.GGUFReader(first)
    assert again is not other and again is not one  # outside a conversion: a fresh parse each time
