"""Sample stage: chunked decoding, and long tracks through every stage."""

import pytest
import torch

from jukebox_lite.sample import decode_long
from tests.test_codes import tiny_model


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("chunk", [17, 64])
def test_chunked_decoding_equals_decoding_the_whole_track(level, chunk):
    model = tiny_model()
    codes = torch.randint(0, 16, (2, 301), generator=torch.Generator().manual_seed(level))
    whole = model.decode([None] * level + [codes], level=level)
    chunked = decode_long(model, codes, level, chunk_tokens=chunk)
    assert chunked.shape == whole.shape == (2, 1, 301 * model.hop_lengths[level])
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
