"""The _capi wrappers against the library: every function called at least once."""

import ctypes

import pytest
import torch

import mlorc
from mlorc import _capi


def _state(rows=20, cols=10, rank=3, algorithm=_capi.MLORC_ADAMW):
    config = _capi.config_init(algorithm)
    config.rank = rank
    desc = _capi.tensor_desc_init(rows, cols, _capi.MLORC_F32)
    return config, desc, _capi.state_create(config, desc)


def test_version_strings():
    assert mlorc.library_version().count(".") == 2
    assert _capi.abi_version() == 1
    assert _capi.status_string(_capi.MLORC_ERROR_CORRUPT_CHECKPOINT) == "MLORC_ERROR_CORRUPT_CHECKPOINT"


def test_layouts_and_sizes():
    config = _capi.config_init(_capi.MLORC_ADAMW)
    small = _capi.tensor_desc_init(8, 8, _capi.MLORC_F32)
    big = _capi.tensor_desc_init(9, 9, _capi.MLORC_BF16)
    assert _capi.resolve_layout(config, small) == _capi.MLORC_LAYOUT_DENSE
    assert _capi.resolve_layout(config, big) == _capi.MLORC_LAYOUT_FACTORED
    assert _capi.buffer_count(config, small) == 2 and _capi.buffer_count(config, big) == 6
    info = _capi.buffer_info(config, big, 1)
    assert (info.name, info.rows, info.cols, info.dtype, info.bytes) == (b"exp_avg.s", 1, 4, _capi.MLORC_F32, 16)
    assert _capi.state_bytes_required(config, big) == 2 * (9 + 9 + 1) * 4 * 4
    with pytest.raises(mlorc.MlorcError) as e:
        _capi.buffer_info(config, big, 6)
    assert e.value.status == _capi.MLORC_ERROR_INVALID_ARGUMENT


def test_state_lifecycle_buffers_and_checkpoints():
    config, desc, h = _state()
    try:
        assert _capi.state_layout(h) == _capi.MLORC_LAYOUT_FACTORED
        assert _capi.state_memory_bytes(h) == 2 * (20 + 10 + 1) * 3 * 4
        p = torch.randn(20, 10)
        g = torch.randn(20, 10)
        opts = _capi.step_options_init(1e-2)
        _capi.step(h, p.data_ptr(), g.data_ptr(), opts)
        assert _capi.state_step_count(h) == 1
        u = torch.empty(20, 3)
        _capi.state_read_buffer(h, "exp_avg.u", u.data_ptr(), u.numel())
        assert u.abs().sum() > 0
        saved = _capi.state_save(h)
        assert len(saved) == _capi.state_save_size(h)
        # set_config / get_config
        c2 = _capi.state_get_config(h)
        c2.beta1 = 0.5
        _capi.state_set_config(h, c2)
        assert _capi.state_get_config(h).beta1 == 0.5
        c2.rank = 4
        with pytest.raises(mlorc.MlorcError):
            _capi.state_set_config(h, c2)
        # write_buffer / set_step_count / load
        _capi.state_write_buffer(h, "exp_avg.u", torch.zeros(20, 3).data_ptr(), 60)
        _capi.state_set_step_count(h, 7)
        assert _capi.state_step_count(h) == 7
        _capi.state_load(h, saved)
        assert _capi.state_step_count(h) == 1 and _capi.state_get_config(h).beta1 == config.beta1
        u2 = torch.empty(20, 3)
        _capi.state_read_buffer(h, "exp_avg.u", u2.data_ptr(), 60)
        assert torch.equal(u, u2)
        with pytest.raises(mlorc.MlorcError) as e:
            _capi.state_load(h, saved[:-3] + b"xyz")
        assert e.value.status in (_capi.MLORC_ERROR_CORRUPT_CHECKPOINT, _capi.MLORC_ERROR_INVALID_ARGUMENT)
        with pytest.raises(mlorc.MlorcError):
            _capi.state_read_buffer(h, "no_such_buffer", u2.data_ptr(), 60)
    finally:
        _capi.state_destroy(h)
    _capi.state_destroy(None)  # NULL is a no-op


def test_caller_buffers_and_step_options_pointers():
    config = _capi.config_init(_capi.MLORC_LION)
    desc = _capi.tensor_desc_init(1, 6, _capi.MLORC_F32)
    (name, rows, cols), = _capi.buffer_infos(config, desc)
    m = torch.zeros(rows, cols)
    h = _capi.state_create_with_buffers(config, desc, [m.data_ptr()])
    try:
        p = torch.zeros(6)
        g = torch.tensor([1.0, -2.0, 0.0, 4.0, -8.0, 16.0])
        lr, scale, inf = torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.0)
        opts = _capi.step_options_init(123.0)  # overridden by lr_ptr
        _capi.set_step_option_pointers(opts, lr_ptr=lr.data_ptr(), grad_scale=scale.data_ptr(),
                                       found_inf=inf.data_ptr())
        _capi.step(h, p.data_ptr(), g.data_ptr(), opts)
        assert torch.equal(p, -0.5 * g.sign())
        assert torch.allclose(m[0], (1 - config.beta2) * g / 2)  # the caller's buffer is the state
        inf.fill_(1.0)
        _capi.step(h, p.data_ptr(), g.data_ptr(), opts)
        assert _capi.state_step_count(h) == 1
    finally:
        _capi.state_destroy(h)


def test_struct_sizes_are_checked_by_the_library():
    config = _capi.config_init(_capi.MLORC_ADAMW)
    config.struct_size = ctypes.sizeof(config) - 8
    desc = _capi.tensor_desc_init(4, 4, _capi.MLORC_F32)
    with pytest.raises(mlorc.MlorcError, match="struct_size"):
        _capi.state_create(config, desc)
